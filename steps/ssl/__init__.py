"""Self-supervised branch: handcrafted features, nearest-neighbour pairs, SSL pretraining."""

from steps.ssl.handcrafted_features import handcrafted_features
from steps.ssl.nn_pairs import nn_pairs

__all__ = ["handcrafted_features", "nn_pairs"]
