"""Chest X-ray classification core: data, features, models, training, inference, metrics.

Plain Python and torch; no ZenML or MLflow imports (those live in steps/).
"""

__version__ = "0.1.0"
