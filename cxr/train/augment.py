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
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms.v2.functional import gaussian_blur


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
    gamma: float = Field(0.0, ge=0, le=1, description="max |ln gamma| of a per-image gamma curve x**gamma "
                         "(0.3: gamma in [0.74, 1.35]); models other sites' tone curves")
    blur_prob: float = Field(0.0, ge=0, le=1, description="share of images Gaussian-blurred")
    blur_sigma: float = Field(1.0, gt=0, description="max blur sigma in pixels of the training image")
    noise_std: float = Field(0.0, ge=0, le=0.5, description="max std of additive Gaussian noise on [0, 1] pixels")
    jpeg_prob: float = Field(0.0, ge=0, le=1, description="share of images JPEG re-compressed")
    jpeg_quality_min: int = Field(30, ge=1, le=100, description="lowest JPEG quality drawn (up to 95)")
    resample_prob: float = Field(0.0, ge=0, le=1, description="share of images downsampled then upsampled")
    resample_scale_min: float = Field(0.5, gt=0, le=1, description="smallest downsampling factor drawn")


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
    x = jitter_intensity(x, cfg.brightness, cfg.contrast, generator)
    return acquisition_shifts(x, cfg, generator)


def chosen(n: int, prob: float, generator: torch.Generator | None) -> list[int]:
    """Indices of the images (each with probability ``prob``) an augmentation applies to."""
    return torch.nonzero(torch.rand(n, generator=generator) < prob).flatten().tolist() if prob > 0 else []


def random_gamma(x: torch.Tensor, max_log: float, generator: torch.Generator | None) -> torch.Tensor:
    """Per-image x**gamma with ln gamma uniform in [-max_log, max_log]."""
    gamma = uniform(x.shape[0], -max_log, max_log, generator).exp().to(x.device, x.dtype).view(-1, 1, 1, 1)
    return x.clamp(1e-6, 1.0).pow(gamma)


def random_blur(x: torch.Tensor, idx: list[int], max_sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    """Gaussian blur of the images ``idx``, each with sigma uniform in [0.3, max_sigma] pixels."""
    for i, sigma in zip(idx, uniform(len(idx), min(0.3, max_sigma), max_sigma, generator).tolist()):
        size = 2 * math.ceil(3 * sigma) + 1
        x[i] = gaussian_blur(x[i], [size, size], [sigma, sigma])
    return x


def random_resample(x: torch.Tensor, idx: list[int], scale_min: float,
                    generator: torch.Generator | None) -> torch.Tensor:
    """Images ``idx`` downsampled (area) by a factor uniform in [scale_min, 1], then resized back
    (bilinear): the detail a lower-resolution detector or an export at reduced size loses."""
    side = x.shape[-2:]
    for i, scale in zip(idx, uniform(len(idx), scale_min, 1.0, generator).tolist()):
        small = F.interpolate(x[i:i + 1], scale_factor=scale, mode="area")
        x[i] = F.interpolate(small, size=side, mode="bilinear", align_corners=False)[0]
    return x


def random_jpeg(x: torch.Tensor, idx: list[int], quality_min: int, generator: torch.Generator | None) -> torch.Tensor:
    """Images ``idx`` JPEG-encoded at a quality uniform in [quality_min, 95] and decoded (on the CPU)."""
    qualities = torch.randint(quality_min, max(quality_min, 95) + 1, (len(idx),), generator=generator).tolist()
    for i, quality in zip(idx, qualities):
        pixels = x[i].mul(255).round().clamp(0, 255).to("cpu", torch.uint8)
        x[i] = decode_jpeg(encode_jpeg(pixels, quality=quality)).to(x.device, x.dtype).div(255)
    return x


def acquisition_shifts(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gamma, blur, down-then-up resampling, JPEG and noise, each only when its knob is on (so the
    random stream of a config without them is unchanged)."""
    n = x.shape[0]
    if cfg.gamma > 0:
        x = random_gamma(x, cfg.gamma, generator)
    x = random_blur(x, chosen(n, cfg.blur_prob, generator), cfg.blur_sigma, generator)
    x = random_resample(x, chosen(n, cfg.resample_prob, generator), cfg.resample_scale_min, generator)
    x = random_jpeg(x, chosen(n, cfg.jpeg_prob, generator), cfg.jpeg_quality_min, generator)
    if cfg.noise_std > 0:
        std = uniform(n, 0.0, cfg.noise_std, generator).to(x.device, x.dtype).view(-1, 1, 1, 1)
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        x = (x + noise * std).clamp_(0.0, 1.0)
    return x
