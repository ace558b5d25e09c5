"""The 22 handcrafted image features of the challenge solution, computed for whole batches.

Intensity (10): mean, std, median, min, max, 25th/75th/90th percentiles, entropy, variance.
GLCM texture (9): contrast, homogeneity, energy at pixel distances 1, 3, 5 (horizontal
offset, 256 gray levels, symmetric, normalised: scikit-image's ``graycomatrix`` +
``graycoprops`` definitions). Edges (3): mean, std, max of the Sobel gradient magnitude
(OpenCV, 3x3).

Why not call scikit-image per image: its GLCM builds a 256x256 matrix per distance per
image. Here, contrast and homogeneity are means over pixel pairs, and energy comes from one
``bincount`` of pair codes for a whole batch. Percentiles are exact order statistics read
off each image's cumulative histogram (the images are uint8). The results equal the
per-image library calls; the tests check that.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler

GLCM_DISTANCES = (1, 3, 5)
INTENSITY_FEATURES = ("mean", "std", "median", "min", "max", "p25", "p75", "p90", "entropy", "variance")
GLCM_FEATURES = tuple(f"glcm_{prop}_d{d}" for d in GLCM_DISTANCES for prop in ("contrast", "homogeneity", "energy"))
EDGE_FEATURES = ("sobel_mean", "sobel_std", "sobel_max")
FEATURE_NAMES = INTENSITY_FEATURES + GLCM_FEATURES + EDGE_FEATURES


def _order_statistic(cumulative: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Value of the k-th smallest pixel (0-based) per image from cumulative histograms."""
    return (cumulative <= k[:, None]).sum(axis=1).astype(np.float64)


def _percentile(cumulative: np.ndarray, n: int, q: float) -> np.ndarray:
    """numpy's default (linear) percentile from cumulative histograms."""
    position = q / 100.0 * (n - 1)
    low, high = int(np.floor(position)), int(np.ceil(position))
    rows = len(cumulative)
    v_low = _order_statistic(cumulative, np.full(rows, low))
    v_high = _order_statistic(cumulative, np.full(rows, high))
    return v_low + (position - low) * (v_high - v_low)


def intensity_features(images: np.ndarray) -> np.ndarray:
    """(B, 10) intensity statistics of uint8 (B, H, W) images."""
    b = len(images)
    flat = images.reshape(b, -1)
    n = flat.shape[1]
    offsets = (np.arange(b, dtype=np.int64) * 256)[:, None]
    hist = np.bincount((flat + offsets).ravel(), minlength=256 * b).reshape(b, 256)
    cumulative = np.cumsum(hist, axis=1)
    levels = np.arange(256, dtype=np.float64)
    mean = hist @ levels / n
    variance = hist @ levels**2 / n - mean**2
    prob = hist / n
    entropy = -(prob * np.log2(np.where(prob > 0, prob, 1.0))).sum(axis=1)
    nonzero = hist > 0
    return np.column_stack([
        mean, np.sqrt(np.maximum(variance, 0)), _percentile(cumulative, n, 50),
        nonzero.argmax(axis=1), 255 - nonzero[:, ::-1].argmax(axis=1),
        _percentile(cumulative, n, 25), _percentile(cumulative, n, 75), _percentile(cumulative, n, 90),
        entropy, np.maximum(variance, 0)])


def glcm_features(images: np.ndarray, distances: tuple[int, ...] = GLCM_DISTANCES) -> np.ndarray:
    """(B, 3 * len(distances)) GLCM contrast, homogeneity, energy per distance (angle 0).

    Symmetric, normalised 256-level GLCM as scikit-image defines it: contrast and
    homogeneity are means over horizontal pixel pairs; energy is sqrt(sum P^2) with
    P = (C + C^T) / (2 * pairs).
    """
    b = len(images)
    out = []
    offsets = (np.arange(b, dtype=np.int64) * 65536)[:, None, None]
    for d in distances:
        left = images[:, :, :-d].astype(np.int64)
        right = images[:, :, d:].astype(np.int64)
        pairs = left.shape[1] * left.shape[2]
        diff2 = ((left - right) ** 2).reshape(b, -1).astype(np.float64)
        contrast = diff2.mean(axis=1)
        homogeneity = (1.0 / (1.0 + diff2)).mean(axis=1)
        counts = np.bincount((left * 256 + right + offsets).ravel(), minlength=65536 * b)
        counts = counts.reshape(b, 256, 256).astype(np.float64)
        symmetric = counts + counts.transpose(0, 2, 1)
        energy = np.sqrt((symmetric**2).sum(axis=(1, 2))) / (2.0 * pairs)
        out += [contrast, homogeneity, energy]
    return np.column_stack(out)


def edge_features(images: np.ndarray) -> np.ndarray:
    """(B, 3) mean, std, max of the 3x3 Sobel gradient magnitude."""
    rows = []
    for image in images:
        gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
        magnitude = cv2.magnitude(gx, gy)
        rows.append((float(magnitude.mean()), float(magnitude.std()), float(magnitude.max())))
    return np.asarray(rows, dtype=np.float64).reshape(len(images), 3)


def batch_features(images: np.ndarray) -> np.ndarray:
    """(B, 22) features of one batch of uint8 (B, H, W) images, in ``FEATURE_NAMES`` order."""
    return np.hstack([intensity_features(images), glcm_features(images), edge_features(images)])


def handcrafted_features(images: np.ndarray, ids: list[str] | None = None, batch_size: int = 64,
                         num_workers: int = 0) -> pd.DataFrame:
    """All 22 features for every image, batches spread over threads (one per core by default)."""
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"handcrafted features need uint8 (N, H, W) images, got {images.dtype} {images.shape}")
    starts = range(0, len(images), batch_size)
    with ThreadPoolExecutor(num_workers or os.cpu_count() or 1) as pool:
        parts = list(pool.map(lambda s: batch_features(images[s:s + batch_size]), starts))
    values = np.vstack(parts) if parts else np.zeros((0, len(FEATURE_NAMES)))
    return pd.DataFrame(values, columns=list(FEATURE_NAMES), index=ids)


@dataclass(frozen=True)
class FeatureTable:
    """Raw features (one row per image id) with the scaler fitted on this pool, kept together."""

    values: pd.DataFrame
    mean: np.ndarray
    scale: np.ndarray

    def standardised(self) -> np.ndarray:
        """(N, F) features scaled by the pool's mean and standard deviation."""
        return (self.values.to_numpy(np.float64) - self.mean) / self.scale


def fit_feature_table(values: pd.DataFrame) -> FeatureTable:
    """Fit scikit-learn's StandardScaler on ``values`` (constant features get scale 1)."""
    scaler = StandardScaler().fit(values.to_numpy(np.float64))
    return FeatureTable(values, scaler.mean_, scaler.scale_)
