"""Batched SSL views of grayscale X-rays: random resized crop, flip, rotation up to 40 degrees,
brightness/contrast jitter and perspective; no hue or saturation (the images are gray).

Each view is one ``affine_grid``/``grid_sample`` call per batch (crop, flip and rotation
folded into one matrix per image) plus a perspective warp on a random subset.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torchvision.transforms.v2 import functional as TF

from cxr.train.augment import jitter_intensity, uniform


class SSLAugmentConfig(BaseModel):
    """View knobs (``parameters.ssl.augment`` in YAML)."""

    model_config = ConfigDict(extra="forbid")

    crop_scale_min: float = Field(0.4, gt=0, le=1, description="smallest crop, fraction of the area")
    hflip_prob: float = Field(0.5, ge=0, le=1)
    rotate_deg: float = Field(40.0, ge=0, le=180)
    brightness: float = Field(0.3, ge=0, le=1)
    contrast: float = Field(0.3, ge=0, le=1)
    perspective_prob: float = Field(0.3, ge=0, le=1)
    perspective_distortion: float = Field(0.2, ge=0, lt=1)
    small_crop_scale: tuple[float, float] = Field((0.1, 0.4), description="SwAV low-resolution crops")


def _crop_matrices(n: int, scale_range: tuple[float, float], cfg: SSLAugmentConfig,
                   generator: torch.Generator | None) -> torch.Tensor:
    """(n, 2, 3) matrices: a square crop of random area and position, flipped and rotated."""
    side = torch.sqrt(uniform(n, *scale_range, generator))
    angle = uniform(n, -cfg.rotate_deg, cfg.rotate_deg, generator) * math.pi / 180
    flip = torch.where(torch.rand(n, generator=generator) < cfg.hflip_prob, -1.0, 1.0)
    centre = (torch.rand(n, 2, generator=generator) * 2 - 1) * (1 - side)[:, None]
    cos, sin = torch.cos(angle) * side, torch.sin(angle) * side
    return torch.stack([torch.stack([cos * flip, -sin, centre[:, 0]], 1),
                        torch.stack([sin * flip, cos, centre[:, 1]], 1)], 1)


def _perspective(x: torch.Tensor, cfg: SSLAugmentConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Random perspective warp on a ``perspective_prob`` share of the batch."""
    size = x.shape[-1]
    chosen = torch.nonzero(torch.rand(len(x), generator=generator) < cfg.perspective_prob).flatten()
    if len(chosen) == 0 or cfg.perspective_distortion == 0:
        return x
    x = x.clone()
    corners = [[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]]
    reach = cfg.perspective_distortion * size / 2
    for i in chosen.tolist():
        shift = (torch.rand(4, 2, generator=generator) * reach).tolist()
        signs = [[1, 1], [-1, 1], [-1, -1], [1, -1]]
        moved = [[c[0] + s[0] * d[0], c[1] + s[1] * d[1]] for c, s, d in zip(corners, signs, shift)]
        x[i] = TF.perspective(x[i], corners, moved)
    return x


def ssl_view(x: torch.Tensor, cfg: SSLAugmentConfig, generator: torch.Generator | None = None,
             output_size: int | None = None, scale_range: tuple[float, float] | None = None) -> torch.Tensor:
    """One random view of a float (B, 1, H, W) batch in [0, 1], optionally at ``output_size``."""
    n, size = len(x), output_size or x.shape[-1]
    theta = _crop_matrices(n, scale_range or (cfg.crop_scale_min, 1.0), cfg, generator).to(x.device, x.dtype)
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    view = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    view = _perspective(view, cfg, generator)
    return jitter_intensity(view, cfg.brightness, cfg.contrast, generator)
