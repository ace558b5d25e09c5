"""Model registry steps."""

from steps.registry.promote_model import promote_model
from steps.registry.register_ensemble import register_ensemble
from steps.registry.register_model import register_model

__all__ = ["promote_model", "register_ensemble", "register_model"]
