"""Inference steps: TTA prediction, submission, batch drift check and streamed batch prediction from the registry."""

from steps.infer.batch_predict import batch_predict
from steps.infer.check_drift import check_drift
from steps.infer.submission import submission
from steps.infer.tta_predict import tta_predict

__all__ = ["batch_predict", "check_drift", "submission", "tta_predict"]
