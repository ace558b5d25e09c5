"""Inference steps: TTA prediction and submission."""

from steps.infer.submission import submission
from steps.infer.tta_predict import tta_predict

__all__ = ["submission", "tta_predict"]
