"""check_test_inputs step: refuse, before any training, a test set or sample submission that the
trained model could not be scored on."""

from typing import Optional

from zenml import step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.data.ingest import resolve_path
from cxr.data.preflight import check_sample_submission, check_test_labels

logger = get_logger(__name__)


@step(enable_cache=False)
def check_test_inputs(images: ImageSet, test_images: ImageSet, sample_submission: Optional[str] = None) -> None:
    """The test set's label names (if it names any) are the training labels, and the sample
    submission lists exactly the test images' ids. Runs on the ingested lists, before preprocessing
    and fine-tuning. YAML: ``parameters.test_data``, ``parameters.sample_submission``.

    Raises:
        DataError: differing label names; sample ids missing from or extra to the test images (the
            first few of each named); a sample column the model will not predict.
    """
    check_test_labels(images, test_images)
    if sample_submission:
        check_sample_submission(resolve_path(sample_submission), list(images.label_names), test_images)
    logger.info("test inputs match: %d test images%s", len(test_images),
                ", every one in the sample submission" if sample_submission else "")
