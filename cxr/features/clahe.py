"""Contrast-limited adaptive histogram equalisation (CLAHE) through OpenCV."""

from __future__ import annotations

import cv2
import numpy as np


def apply_clahe(image: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """CLAHE on a uint8 (H, W) image with a ``tile_grid`` x ``tile_grid`` grid of tiles."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"CLAHE needs a uint8 (H, W) image, got {image.dtype} {image.shape}")
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid))
    return clahe.apply(image)
