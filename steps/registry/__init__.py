"""Model registry steps."""

from steps.registry.model_card import model_card
from steps.registry.promote_model import promote_model
from steps.registry.register_ensemble import register_ensemble
from steps.registry.register_model import register_model

__all__ = ["model_card", "promote_model", "register_ensemble", "register_model"]
