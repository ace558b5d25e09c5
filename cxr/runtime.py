"""Runtime helpers every package uses: device choice, uint8-to-input conversion, determinism
and image statistics.

A leaf module: it imports nothing from ``cxr``, so a step's cache key (which follows ``cxr``
imports) does not pull in the fine-tune loop when SSL, CFT or inference only need a device.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_input(batch: np.ndarray | torch.Tensor, mean: float, std: float,
             device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W) to normalised float (B, 1, H, W) on ``device``.

    The uint8 batch travels to the device first (4x less to copy), then is converted there.
    """
    x = torch.as_tensor(batch).to(device, non_blocking=True).unsqueeze(1).float().div_(255.0)
    return x.sub_(mean).div_(std)


def seeded_sample(rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` of ``rows``, a seeded sample kept in their order (all of them when few; read
    into memory when ``rows`` are sharded images)."""
    if len(rows) <= limit:
        return rows[:]
    return rows[np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))]


def image_stats(images: np.ndarray, max_images: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Pixel mean and std of (a seeded sample of) the training images, on the [0, 1] scale."""
    sample = seeded_sample(images, max_images, seed).astype(np.float32) / 255.0
    return float(sample.mean()), float(max(sample.std(), 1e-3))


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed python/numpy/torch and use deterministic kernels for the block."""
    previous = torch.are_deterministic_algorithms_enabled()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
