"""Batched inference on uint8 image arrays: normalisation and probabilities."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from cxr.runtime import resolve_device, to_input

View = Callable[[torch.Tensor], torch.Tensor]


def predict_proba(model: nn.Module, images: np.ndarray, mean: float, std: float,
                  batch_size: int = 64, device: str | torch.device = "auto",
                  views: tuple[View, ...] = (), amp: bool = True) -> np.ndarray:
    """Sigmoid probabilities (N, L) averaged over ``views`` (identity when none is given).

    The views of a batch are stacked and go through the model ``batch_size`` images at a
    time: a forward batch never grows with the number of views (on a CPU, one 5x larger
    batch is slower per image than five batches). The model moves to ``device`` outside
    inference mode: moved inside it, its weights would become inference tensors that a later
    training step (or DDP's buffer sync) cannot use.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    model = model.eval().to(device)
    use_amp = amp and device.type == "cuda"
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = to_input(images[start:start + batch_size], mean, std, device)
            stacked = torch.cat([view(x) for view in views]) if views else x
            if device.type == "cuda":
                stacked = stacked.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, enabled=use_amp):
                probs = torch.sigmoid(torch.cat([model(chunk) for chunk in stacked.split(batch_size)]).float())
            out.append(probs.view(max(len(views), 1), len(x), -1).mean(0).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
