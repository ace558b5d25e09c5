"""AdaBN: BatchNorm statistics re-estimated on a target site's unlabelled images.

Li et al., "Revisiting Batch Normalization For Practical Domain Adaptation" (ICLR-W 2017,
https://arxiv.org/abs/1603.04779): the weights stay, and every BatchNorm layer's running
mean and variance are replaced by their average over the target images, so activations are
normalised as that site's images need. Written here because it is a dozen lines on
torch's own ``momentum=None`` cumulative average; no maintained library offers it for timm
backbones.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from cxr.models.checkpoint import Checkpoint
from cxr.runtime import resolve_device, to_input


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that track running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def adapt_batchnorm(model: nn.Module, images: np.ndarray, mean: float, std: float, batch_size: int = 64,
                    device: str | torch.device = "cpu") -> int:
    """Replace the running statistics of ``model``'s BatchNorm layers by their average over
    near-equal batches of at most ``batch_size`` of uint8 (N, H, W) ``images``; returns how
    many layers were adapted (0, with a warning, for a model without BatchNorm, e.g.
    LayerNorm or GroupNorm only)."""
    layers = batchnorm_layers(model)
    if not layers:
        warnings.warn("the model has no BatchNorm layer with running statistics: AdaBN leaves it unchanged",
                      stacklevel=2)
        return 0
    if len(images) < 2:
        raise ValueError(f"AdaBN needs at least 2 target images, got {len(images)}")
    device = resolve_device(device) if isinstance(device, str) else device
    model.to(device).eval()
    saved = [(layer, layer.momentum) for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average: every batch counts once
        layer.train()
    try:
        with torch.no_grad():
            for batch in np.array_split(images, -(-len(images) // batch_size)):
                model(to_input(batch, mean, std, device))
    finally:
        for layer, momentum in saved:
            layer.momentum = momentum
            layer.eval()
    return len(layers)


def adabn_checkpoint(checkpoint: Checkpoint, images: np.ndarray, batch_size: int = 64,
                     device: str | torch.device = "cpu") -> Checkpoint:
    """A copy of ``checkpoint`` whose BatchNorm statistics come from ``images`` (same
    preprocessing as training); the weights are unchanged."""
    model = checkpoint.build_model()
    adapt_batchnorm(model, images, checkpoint.meta.mean, checkpoint.meta.std, batch_size, device)
    return Checkpoint.from_model(model.cpu(), checkpoint.meta)
