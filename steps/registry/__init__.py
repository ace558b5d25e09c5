"""Model registry steps."""

from steps.registry.register_model import register_model

__all__ = ["register_model"]
