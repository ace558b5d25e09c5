"""Test-time augmentation: registered views (the reference five by default), run as one stacked
batch per image batch."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cxr.data.imageset import ImageSet
from cxr.infer.predict import View, predict_proba
from cxr.metrics.calibration import apply_calibration
from cxr.models.checkpoint import Checkpoint
from cxr.registry import Registry


def _rotate(degrees: float) -> View:
    def view(x: torch.Tensor) -> torch.Tensor:
        a = math.radians(degrees)
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                             dtype=x.dtype, device=x.device).expand(len(x), 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return view


def _center_zoom(factor: float) -> View:
    def view(x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        crop = int(round(size / factor))
        start = (size - crop) // 2
        patch = x[..., start:start + crop, start:start + crop]
        return F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False)
    return view


VIEWS = Registry("TTA view")
register_view = VIEWS.register
ViewName = VIEWS.choice()


@register_view("original")
def original() -> View:
    return lambda x: x


@register_view("hflip")
def hflip() -> View:
    return lambda x: torch.flip(x, dims=(-1,))


@register_view("rotate+5")
def rotate_plus_5() -> View:
    return _rotate(5.0)


@register_view("rotate-5")
def rotate_minus_5() -> View:
    return _rotate(-5.0)


@register_view("zoom")
def zoom() -> View:
    """Center crop of 1/1.1 of the side, resized back."""
    return _center_zoom(1.1)


REFERENCE_VIEWS = ("original", "hflip", "rotate+5", "rotate-5", "zoom")
SINGLE_VIEW = ("original",)


def tta_views(names: Sequence[str]) -> tuple[View, ...]:
    """The named views; raises naming any unknown one."""
    return tuple(VIEWS.create(name) for name in names)


def predict_imageset(checkpoint: Checkpoint, imageset: ImageSet, views: Sequence[str] = REFERENCE_VIEWS,
                     batch_size: int = 64, device: str = "auto") -> pd.DataFrame:
    """Predictions DataFrame: ``id`` plus one probability column per label, TTA-averaged, then
    through the checkpoint's calibration (if it has one)."""
    if imageset.images is None:
        raise ValueError("the image set has no decoded images: run preprocess first")
    size = checkpoint.meta.image_size
    if imageset.images.shape[1:] != (size, size):
        raise ValueError(f"images are {imageset.images.shape[1:]} but the model was trained at "
                         f"{size}x{size}: preprocess them with the training settings")
    probs = predict_proba(checkpoint.inference_model(), imageset.images, checkpoint.meta.mean, checkpoint.meta.std,
                          batch_size, device, tta_views(views))
    probs = apply_calibration(probs.astype(np.float64), checkpoint.meta.calibration, checkpoint.meta.label_names)
    frame = pd.DataFrame(probs, columns=checkpoint.meta.label_names)
    frame.insert(0, "id", imageset.ids)
    return frame
