"""Training steps."""

from steps.train.cft_features import cft_features
from steps.train.cft_finetune import cft_finetune
from steps.train.finetune import finetune

__all__ = ["cft_features", "cft_finetune", "finetune"]
