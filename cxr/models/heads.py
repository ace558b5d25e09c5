"""Classification heads over backbone features, one registry by name.

Each head takes (B, C, H, W) feature maps (or (B, N, C) tokens for the pooled heads) and
returns (B, num_classes) logits.
"""

from __future__ import annotations

import torch
from torch import nn

from cxr.registry import Registry

HEADS = Registry("head")
register_head = HEADS.register
list_heads = HEADS.names
HeadName = HEADS.choice()


def create_head(name: str, in_features: int, num_classes: int, **kwargs) -> nn.Module:
    """Build the head registered as ``name``; None kwargs keep the head's defaults."""
    return HEADS.create(name, in_features, num_classes, **kwargs)


def global_avg_pool(features: torch.Tensor) -> torch.Tensor:
    """Mean over space (B, C, H, W) or over tokens (B, N, C) to (B, C)."""
    if features.ndim == 4:
        return features.mean(dim=(2, 3))
    if features.ndim == 3:
        return features.mean(dim=1)
    return features


@register_head("linear")
class LinearHead(nn.Module):
    """Average pool, optional non-affine BatchNorm, dropout, one linear layer.

    The BatchNorm standardises frozen features the way linear evaluation of SSL backbones
    does (MoCo v3, MAE): without it a linear head on raw SSL features trains slowly.
    """

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0, batch_norm: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_features, affine=False) if batch_norm else nn.Identity()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes)

    def pre_logits(self, features: torch.Tensor) -> torch.Tensor:
        """What ``fc`` receives: the penultimate features."""
        return self.drop(self.norm(global_avg_pool(features)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pre_logits(features))


@register_head("mlp")
class MLPHead(nn.Module):
    """The reference MLP head: pool, in -> 1024 -> 512 -> classes, ReLU and dropout, optional BN."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (1024, 512),
                 drop_rate: float = 0.3, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h)]
            layers += [nn.BatchNorm1d(h)] if batch_norm else []
            layers += [nn.ReLU(inplace=True), nn.Dropout(drop_rate)]
            width = h
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def pre_logits(self, features: torch.Tensor) -> torch.Tensor:
        """What ``fc`` receives: the penultimate features."""
        return self.body(global_avg_pool(features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pre_logits(features))


@register_head("attention")
class SpatialAttentionHead(nn.Module):
    """Spatial attention pooling: 1x1 conv -> ReLU -> 1x1 conv -> sigmoid map, weighted mean, linear.

    The map lets the model weight lung regions over borders and text; it is also what the
    head exposes as ``last_attention`` for inspection.
    """

    def __init__(self, in_features: int, num_classes: int, reduction: int = 8,
                 drop_rate: float = 0.0):
        super().__init__()
        hidden = max(in_features // reduction, 1)
        self.attention = nn.Sequential(
            nn.Conv2d(in_features, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1), nn.Sigmoid())
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes)
        self.last_attention: torch.Tensor | None = None

    def pre_logits(self, features: torch.Tensor) -> torch.Tensor:
        """What ``fc`` receives: the attention-pooled features."""
        if features.ndim != 4:
            raise ValueError("the attention head needs (B, C, H, W) feature maps from a CNN backbone")
        weights = self.attention(features)
        self.last_attention = weights.detach()
        pooled = (features * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3)).clamp_min(1e-6)
        return self.drop(pooled)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pre_logits(features))
