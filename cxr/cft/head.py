"""The last layer of a trained classifier: its input features, and a copy with a new layer.

Every head ends in ``fc`` (``nn.Linear``); its input is the penultimate feature vector
that CFT's per-category logistic regressions work on.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from cxr.models.checkpoint import Checkpoint
from cxr.runtime import resolve_device, to_input

FC_WEIGHT = "head.fc.weight"
FC_BIAS = "head.fc.bias"


def penultimate_features(checkpoint: Checkpoint, images: np.ndarray, batch_size: int = 128,
                         device: str = "auto") -> np.ndarray:
    """(N, D) float32 inputs of the head's ``fc`` layer for uint8 (N, H, W) images (the model's
    ``penultimate``: the classifier's, or an exported graph's). The model moves to ``device``
    outside inference mode, as in ``predict_proba``."""
    device = resolve_device(device)
    model = checkpoint.inference_model().to(device)
    with torch.inference_mode():
        out = [model.penultimate(to_input(images[start:start + batch_size], checkpoint.meta.mean,
                                          checkpoint.meta.std, device)).float().cpu()
               for start in range(0, len(images), batch_size)]
    if not out:
        return np.zeros((0, checkpoint.state_dict[FC_WEIGHT].shape[1]), np.float32)
    return torch.cat(out).numpy()


def last_layer(checkpoint: Checkpoint) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (L, D), bias (L,)) of the head's ``fc`` layer."""
    return checkpoint.state_dict[FC_WEIGHT], checkpoint.state_dict[FC_BIAS]


def with_last_layer(checkpoint: Checkpoint, weight: torch.Tensor, bias: torch.Tensor,
                    val_metrics: dict[str, float] | None = None) -> Checkpoint:
    """A copy of ``checkpoint`` whose ``fc`` layer is (weight, bias); other tensors shared."""
    old_w, old_b = last_layer(checkpoint)
    if weight.shape != old_w.shape or bias.shape != old_b.shape:
        raise ValueError(f"new last layer {tuple(weight.shape)}/{tuple(bias.shape)} does not match "
                         f"{tuple(old_w.shape)}/{tuple(old_b.shape)}")
    state = {**checkpoint.state_dict, FC_WEIGHT: weight.to(old_w.dtype).contiguous(),
             FC_BIAS: bias.to(old_b.dtype).contiguous()}
    meta = checkpoint.meta if val_metrics is None else checkpoint.meta.model_copy(update={"val_metrics": val_metrics})
    return replace(checkpoint, state_dict=state, meta=meta)
