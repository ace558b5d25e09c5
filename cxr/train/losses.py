"""Multi-label losses that ignore unknown labels: BCE, pos_weight BCE and focal loss.

Every loss takes ``(logits, targets, mask)`` and averages over known labels only, so one
loss serves binary, multi-label and partially labelled (CheXpert U-Ignore) data.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr.registry import Registry

LOSSES = Registry("loss")
register_loss = LOSSES.register
LossName = LOSSES.choice()


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is True (all of them when mask is None)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def smooth_targets(targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Pull 0/1 targets toward 0.5 by ``label_smoothing``."""
    return targets * (1 - label_smoothing) + 0.5 * label_smoothing


def pos_weight_from_labels(labels: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """negatives / positives per label, counted over known labels only."""
    positives = ((labels > 0.5) & mask).sum(0).astype(np.float64)
    negatives = ((labels <= 0.5) & mask).sum(0).astype(np.float64)
    return torch.tensor(negatives / np.maximum(positives, 1.0), dtype=torch.float32)


class MaskedBCELoss(nn.Module):
    """Binary cross-entropy per label, optionally with ``pos_weight`` (e.g. negatives/positives)."""

    def __init__(self, pos_weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.register_buffer("pos_weight", pos_weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        targets = smooth_targets(targets, self.label_smoothing)
        losses = F.binary_cross_entropy_with_logits(
            logits, targets, pos_weight=self.pos_weight, reduction="none")
        return masked_mean(losses, mask)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017, arXiv:1708.02002): BCE scaled by (1 - p_t)^gamma.

    ``alpha`` weights positives (1 - alpha weights negatives); None disables it.
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0, label_smoothing: float = 0.0):
        super().__init__()
        if alpha is not None and not 0 < alpha < 1:
            raise ValueError(f"focal alpha must be in (0, 1), got {alpha}")
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.alpha, self.gamma, self.label_smoothing = alpha, gamma, label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        targets = smooth_targets(targets, self.label_smoothing)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        prob = torch.sigmoid(logits)
        p_t = prob * targets + (1 - prob) * (1 - targets)
        losses = bce * (1 - p_t).pow(self.gamma)
        if self.alpha is not None:
            losses = losses * (self.alpha * targets + (1 - self.alpha) * (1 - targets))
        return masked_mean(losses, mask)


@register_loss("bce")
def bce(labels: np.ndarray, mask: np.ndarray, label_smoothing: float = 0.0) -> nn.Module:
    """Plain masked BCE."""
    return MaskedBCELoss(label_smoothing=label_smoothing)


@register_loss("pos_weight_bce")
def pos_weight_bce(labels: np.ndarray, mask: np.ndarray, label_smoothing: float = 0.0) -> nn.Module:
    """Masked BCE with pos_weight = negatives / positives of the training labels (an NIH baseline)."""
    return MaskedBCELoss(pos_weight_from_labels(labels, mask), label_smoothing)


@register_loss("focal")
def focal(labels: np.ndarray, mask: np.ndarray, focal_alpha: float | None = 0.25, focal_gamma: float = 2.0,
          label_smoothing: float = 0.0) -> nn.Module:
    """Focal loss; ``focal_alpha`` None turns the class weighting off."""
    return FocalLoss(focal_alpha, focal_gamma, label_smoothing)


def create_loss(name: str, labels: np.ndarray, mask: np.ndarray, **knobs) -> nn.Module:
    """The loss ``name`` for these training labels, from the ``knobs`` (a flat config's fields) it takes."""
    return LOSSES.create_from(name, labels, mask, knobs=knobs)
