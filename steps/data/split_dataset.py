"""split_dataset step: seeded, stratified, patient-level train/val split."""

from typing import Annotated

from zenml import step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.data.split import SplitConfig, split_train_val
from steps.caching import code_cache_policy

logger = get_logger(__name__)


@step(cache_policy=code_cache_policy(__name__))
def split_dataset(images: ImageSet, cfg: SplitConfig) -> Annotated[ImageSet, "split_images"]:
    """Mark each image 'train', 'val' or (with ``split.proxy``) 'proxy', no patient on two sides.
    YAML: ``parameters.split``.

    Raises:
        DataError: an empty split, too few patients, or a val label with a single class.
    """
    out = split_train_val(images, cfg)
    counts = out.manifest["split"].value_counts().to_dict()
    patients = out.manifest.groupby("split")["patient_id"].nunique().to_dict()
    logger.info("split %s (patients: %s)", counts, patients)
    return out
