"""Grad-CAM overlays of a classifier's top findings (the grad-cam library, on the backbone's
last feature map)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cxr.models.checkpoint import Checkpoint
from cxr.runtime import resolve_device, to_input


def gradcam_maps(checkpoint: Checkpoint, image: np.ndarray, labels: list[int], device: str = "auto") -> np.ndarray:
    """(len(labels), H, W) Grad-CAM maps in [0, 1] of one uint8 (H, W) image, one per label index.

    The target layer is the whole backbone, whose output is the last spatial feature map
    (the heads pool it); token backbones (ViTs) would need a reshape and are refused.
    """
    device = resolve_device(device)
    model = checkpoint.build_model().to(device).requires_grad_(True)  # a frozen backbone has no gradients
    x = to_input(image[None], checkpoint.meta.mean, checkpoint.meta.std, device)
    with torch.no_grad():
        features = model.backbone(x)
    if features.ndim != 4:
        raise ValueError(f"Grad-CAM needs a (B, C, H, W) feature map; {checkpoint.meta.model.backbone} "
                         f"gives shape {tuple(features.shape)}")
    with GradCAM(model=model, target_layers=[model.backbone]) as cam:
        maps = [cam(input_tensor=x, targets=[ClassifierOutputTarget(j)])[0] for j in labels]
    return np.stack(maps).astype(np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, title: str) -> np.ndarray:
    """RGB uint8 overlay of a [0, 1] map on a uint8 gray image, with a title strip."""
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32) / 255.0
    out = show_cam_on_image(rgb, cam, use_rgb=True)
    scale = max(1, 256 // out.shape[0])
    out = cv2.resize(out, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    strip = np.full((22, out.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([strip, out])


def write_overlays(checkpoint: Checkpoint, image: np.ndarray, probs: np.ndarray, out_path: str | Path,
                   top: int = 3, device: str = "auto") -> Path:
    """One PNG with the Grad-CAM overlays of the ``top`` most probable findings side by side."""
    order = [int(j) for j in np.argsort(-probs)[:top]]
    maps = gradcam_maps(checkpoint, image, order, device)
    names = checkpoint.meta.label_names
    tiles = [overlay(image, cam, f"{names[j]} {probs[j]:.2f}") for j, cam in zip(order, maps)]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_path), cv2.cvtColor(np.hstack(tiles), cv2.COLOR_RGB2BGR))
    return out_path
