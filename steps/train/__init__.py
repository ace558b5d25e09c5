"""Training steps."""

from steps.train.finetune import finetune

__all__ = ["finetune"]
