"""preprocess_images step: decode once, resize, CLAHE, into one uint8 array."""

import time
from typing import Annotated

from zenml import log_metadata, step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from steps.caching import code_cache_policy

logger = get_logger(__name__)


@step(cache_policy=code_cache_policy(__name__))
def preprocess_images(images: ImageSet, cfg: PreprocessConfig) -> Annotated[ImageSet, "decoded_images"]:
    """Decode every image in parallel, make it square, resize and equalise (CLAHE).

    YAML: ``parameters.preprocess``. With ``skip_corrupt`` unreadable files are left out
    and listed in the output's ``skipped`` (and in this step's metadata).

    Raises:
        DataError: unreadable image files (all of them listed), unless ``skip_corrupt``.
    """
    started = time.perf_counter()
    out = preprocess_imageset(images, cfg)
    seconds = time.perf_counter() - started
    logger.info("preprocessed %d images in %.1f s (%.0f images/s)", len(images), seconds,
                len(images) / max(seconds, 1e-9))
    for item in out.skipped:
        logger.warning("skipped %s: %s", item["path"], item["reason"])
    log_metadata({"images_per_second": len(images) / max(seconds, 1e-9), "skipped_count": len(out.skipped),
                  "skipped": [item["path"] for item in out.skipped]})
    return out
