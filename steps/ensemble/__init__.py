"""Ensemble steps."""

from steps.ensemble.ensemble_predictions import ensemble_predictions

__all__ = ["ensemble_predictions"]
