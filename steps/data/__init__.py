"""Data steps: ingest, split, preprocess, leakage audit."""

from steps.data.audit_leakage import audit_leakage
from steps.data.check_test_inputs import check_test_inputs
from steps.data.ingest import ingest
from steps.data.preprocess_images import preprocess_images
from steps.data.split_dataset import split_dataset

__all__ = ["audit_leakage", "check_test_inputs", "ingest", "preprocess_images", "split_dataset"]
