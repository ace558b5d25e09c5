"""Acquisition corruptions at five severities, in the style of MedMNIST-C (Di Salvo et al., 2024)
and ImageNet-C: what another site's detector, export or viewer does to a chest X-ray.

Each entry of ``CORRUPTIONS`` maps uint8 (N, H, W) images, a severity 1-5 and a numpy
generator to corrupted uint8 images of the same shape. Severity parameters are relative to
the image side where they are spatial, so a corruption means the same at 64 and 224 px.
Written here rather than taken from MedMNIST-C's package, which works on PIL images one at a
time, pulls in wand/ImageMagick, and has no inverted-polarity or resampling entry.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from cxr.registry import Registry

SEVERITIES = (1, 2, 3, 4, 5)
CORRUPTIONS = Registry("corruption")
CorruptionName = CORRUPTIONS.choice()
Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def level(values: tuple[float, ...], severity: int) -> float:
    """The parameter of ``severity`` (1-5) from a five-value ladder."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    return values[severity - 1]


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def per_image(images: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.stack([fn(image) for image in images]) if len(images) else images.copy()


@CORRUPTIONS.register("gaussian_noise")
def gaussian_noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise, std 2-12% of the range (quantum noise of a low-dose exposure)."""
    std = level((0.02, 0.04, 0.06, 0.08, 0.12), severity) * 255
    return to_uint8(images + rng.normal(0, std, images.shape))


@CORRUPTIONS.register("gaussian_blur")
def gaussian_blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur, sigma 0.8-3% of the side (detector unsharpness, patient motion)."""
    sigma = level((0.008, 0.012, 0.017, 0.023, 0.03), severity) * images.shape[-1]
    size = 2 * int(np.ceil(3 * sigma)) + 1
    return per_image(images, lambda im: cv2.GaussianBlur(im, (size, size), sigma, borderType=cv2.BORDER_REFLECT))


@CORRUPTIONS.register("contrast")
def contrast(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Contrast scaled towards each image's mean by 0.75-0.2 (a flat window or exposure)."""
    factor = level((0.75, 0.6, 0.45, 0.3, 0.2), severity)
    mean = images.mean(axis=(1, 2), keepdims=True)
    return to_uint8((images - mean) * factor + mean)


@CORRUPTIONS.register("gamma")
def gamma(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A gamma curve x**g, g 1.3-3.0 or its inverse, half the images each (another tone curve)."""
    g = level((1.3, 1.6, 2.0, 2.5, 3.0), severity)
    exponents = np.where(rng.random(len(images)) < 0.5, g, 1 / g).reshape(-1, 1, 1)
    return to_uint8(255 * (images / 255.0) ** exponents)


@CORRUPTIONS.register("jpeg")
def jpeg(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """JPEG re-compression at quality 40-5 (a lossy PACS export or a screenshot)."""
    quality = int(level((40, 25, 15, 10, 5), severity))

    def recompress(image: np.ndarray) -> np.ndarray:
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE)
    return per_image(images, recompress)


@CORRUPTIONS.register("resample")
def resample(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Downsampled (area) to 75-20% of the side and resized back (bilinear): a lower-resolution
    detector or an export at reduced size."""
    scale = level((0.75, 0.5, 0.4, 0.3, 0.2), severity)
    h, w = images.shape[1:]
    small = (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1))
    return per_image(images, lambda im: cv2.resize(cv2.resize(im, small, interpolation=cv2.INTER_AREA), (w, h),
                                                   interpolation=cv2.INTER_LINEAR))


def warp(images: np.ndarray, angles: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Each image rotated by its angle (degrees) and scaled about the centre, borders replicated."""
    h, w = images.shape[1:]
    return np.stack([cv2.warpAffine(im, cv2.getRotationMatrix2D((w / 2, h / 2), float(a), float(s)), (w, h),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                     for im, a, s in zip(images, angles, scales)]) if len(images) else images.copy()


@CORRUPTIONS.register("rotate")
def rotate(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Rotation by 3-15 degrees, either way at random (patient positioning)."""
    degrees = level((3, 6, 9, 12, 15), severity)
    return warp(images, rng.choice([-degrees, degrees], len(images)), np.ones(len(images)))


@CORRUPTIONS.register("zoom")
def zoom(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Zoom in or out by 5-30% about the centre, at random (collimation, source distance)."""
    amount = level((0.05, 0.1, 0.15, 0.2, 0.3), severity)
    scales = np.where(rng.random(len(images)) < 0.5, 1 + amount, 1 / (1 + amount))
    return warp(images, np.zeros(len(images)), scales)


@CORRUPTIONS.register("invert")
def invert(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Polarity: blended 10-40% towards the negative (a washed-out, mis-windowed export) at
    severities 1-4, fully inverted at 5 (MONOCHROME1 read as MONOCHROME2)."""
    weight = level((0.1, 0.2, 0.3, 0.4, 1.0), severity)
    return to_uint8((1 - weight) * images.astype(np.float64) + weight * (255.0 - images))


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """``images`` under the corruption ``name`` at ``severity``, reproducibly for a ``seed``."""
    return CORRUPTIONS.get(name)(np.asarray(images), severity, np.random.default_rng(seed))
