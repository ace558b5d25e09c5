"""Inference steps: TTA prediction, submission, streamed batch prediction from the registry."""

from steps.infer.batch_predict import batch_predict
from steps.infer.submission import submission
from steps.infer.tta_predict import tta_predict

__all__ = ["batch_predict", "submission", "tta_predict"]
