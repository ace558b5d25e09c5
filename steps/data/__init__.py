"""Data steps: ingest, split, preprocess."""

from steps.data.ingest import ingest
from steps.data.preprocess_images import preprocess_images
from steps.data.split_dataset import split_dataset

__all__ = ["ingest", "preprocess_images", "split_dataset"]
