"""Evaluation steps."""

from steps.evaluate.evaluate import evaluate

__all__ = ["evaluate"]
