"""Self-supervised branch: handcrafted features, nearest-neighbour pairs, SSL pretraining."""

from steps.ssl.handcrafted_features import handcrafted_features
from steps.ssl.nn_pairs import nn_pairs
from steps.ssl.ssl_pretrain import ssl_pretrain
from steps.ssl.ssl_probe import ssl_probe

__all__ = ["handcrafted_features", "nn_pairs", "ssl_pretrain", "ssl_probe"]
