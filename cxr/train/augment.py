"""Batched X-ray augmentations on tensors: one affine warp and one intensity jitter per batch.

Working on whole (B, 1, H, W) batches with ``affine_grid``/``grid_sample`` costs one kernel
per batch instead of a PIL call per image, and runs on the GPU when the batch is there.
No hue/saturation: the images are grayscale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field


class AugmentConfig(BaseModel):
    """Training augmentation knobs (``parameters.train.augment`` in YAML)."""

    model_config = ConfigDict(extra="forbid")

    hflip_prob: float = Field(0.5, ge=0, le=1)
    rotate_deg: float = Field(10.0, ge=0, le=180)
    scale_min: float = Field(0.9, gt=0)
    scale_max: float = Field(1.1, gt=0)
    translate: float = Field(0.06, ge=0, le=0.5, description="max shift, fraction of the side")
    brightness: float = Field(0.1, ge=0, le=1, description="max additive shift on [0, 1] pixels")
    contrast: float = Field(0.15, ge=0, le=1, description="max relative contrast change")


def uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    """n values drawn uniformly from [low, high)."""
    return torch.rand(n, generator=generator) * (high - low) + low


def jitter_intensity(x: torch.Tensor, brightness: float, contrast: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image contrast scaling about the image mean plus a brightness shift, clamped to [0, 1]."""
    n = x.shape[0]
    scale = uniform(n, 1 - contrast, 1 + contrast, generator).to(x.device, x.dtype).view(n, 1, 1, 1)
    shift = uniform(n, -brightness, brightness, generator).to(x.device, x.dtype).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * scale + mean + shift).clamp_(0.0, 1.0)


def random_affine_matrices(n: int, cfg: AugmentConfig,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 2, 3) matrices mapping output to input coordinates for ``affine_grid``."""
    angle = uniform(n, -cfg.rotate_deg, cfg.rotate_deg, generator) * math.pi / 180
    scale = uniform(n, cfg.scale_min, cfg.scale_max, generator)
    flip = torch.where(torch.rand(n, generator=generator) < cfg.hflip_prob, -1.0, 1.0)
    shift = uniform(2 * n, -2 * cfg.translate, 2 * cfg.translate, generator).view(n, 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * flip, -sin, shift[:, 0]], 1),
        torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    return theta


def augment_batch(x: torch.Tensor, cfg: AugmentConfig,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly flip, rotate, scale, shift and jitter a float (B, 1, H, W) batch in [0, 1]."""
    n = x.shape[0]
    theta = random_affine_matrices(n, cfg, generator).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return jitter_intensity(x, cfg.brightness, cfg.contrast, generator)
