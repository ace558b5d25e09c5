"""Training steps."""

from steps.train.adapt_to_target import adapt_to_target
from steps.train.cft_features import cft_features
from steps.train.cft_finetune import cft_finetune
from steps.train.finetune import finetune
from steps.train.fit_guardrails import fit_guardrails

__all__ = ["adapt_to_target", "cft_features", "cft_finetune", "finetune", "fit_guardrails"]
