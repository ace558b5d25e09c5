"""ingest step: read a folder tree, image folder, CSV table or MedMNIST archive."""

from typing import Annotated

from zenml import log_metadata, step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.data.ingest import IngestConfig, read_source

logger = get_logger(__name__)


@step(enable_cache=False)
def ingest(source: IngestConfig) -> Annotated[ImageSet, "images"]:
    """List the images and labels of ``source`` and check every file exists and is non-empty.

    Never cached: it reads the file system, which ZenML cannot watch. It costs well under a
    second per 10,000 files, and its output carries a content hash (file sizes and times),
    so later steps stay cached when nothing on disk changed. YAML: ``parameters.data``.

    Raises:
        DataError: a missing or zero-byte file, duplicate id, unknown label value or column.
    """
    images = read_source(source)
    logger.info("ingested %d images, labels %s, %d patients", len(images), list(images.label_names),
                images.manifest["patient_id"].nunique())
    log_metadata({"images": len(images), "labels": list(images.label_names)})
    return images
