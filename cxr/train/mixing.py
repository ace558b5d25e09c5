"""MixUp and CutMix for multi-label targets with masks.

timm's ``Mixup`` expects class indices and one-hot encodes them; X-ray labels are already
multi-label indicator vectors with unknown entries, so mixing is done here: targets mix with
the same weight as pixels, and a label stays known only if it is known in both images.
"""

from __future__ import annotations

import numpy as np
import torch


def _cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random box covering about ``1 - lam`` of the image."""
    cut = np.sqrt(1.0 - lam)
    h, w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    return (max(cy - h // 2, 0), min(cy + h // 2, height), max(cx - w // 2, 0), min(cx + w // 2, width))


def mix_batch(x: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator,
              mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
              prob: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix the batch with a shuffled copy of itself (MixUp or CutMix, chosen at random).

    Returns mixed images, mixed targets and the joint known-label mask.
    """
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or rng.random() >= prob:
        return x, targets, mask
    perm = torch.from_numpy(rng.permutation(x.shape[0])).to(x.device)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    if use_cutmix:
        lam = float(rng.beta(cutmix_alpha, cutmix_alpha))
        top, bottom, left, right = _cutmix_box(x.shape[2], x.shape[3], lam, rng)
        x = x.clone()
        x[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (x.shape[2] * x.shape[3])
    else:
        lam = float(rng.beta(mixup_alpha, mixup_alpha))
        x = lam * x + (1 - lam) * x[perm]
    mixed = lam * targets + (1 - lam) * targets[perm]
    return x, mixed, mask & mask[perm]
