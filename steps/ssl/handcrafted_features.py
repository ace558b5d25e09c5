"""handcrafted_features step: 22 intensity/texture/edge features per image, standardised."""

import time
from typing import Annotated

from zenml import log_metadata, step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.features.handcrafted import FeatureTable, fit_feature_table, handcrafted_features as compute
from steps.caching import code_cache_policy

logger = get_logger(__name__)


@step(cache_policy=code_cache_policy(__name__))
def handcrafted_features(images: ImageSet) -> Annotated[FeatureTable, "features"]:
    """Compute the 22 features of the 'train' rows (the SSL pool; row order is what the pair
    indices refer to), in parallel, and fit the StandardScaler on them (kept in the artifact).
    """
    part = images.split("train")
    started = time.perf_counter()
    table = fit_feature_table(compute(part.images, ids=part.ids))
    seconds = time.perf_counter() - started
    logger.info("features for %d images in %.1f s (%.0f images/s)", len(part), seconds, len(part) / seconds)
    log_metadata({"images_per_second": len(part) / seconds, "images": len(part)})
    return table
