"""Decode any chest X-ray file to one 8-bit grayscale array and resize it to a square.

OpenCV decodes 8- and 16-bit, gray, RGB and RGBA files; everything ends as uint8 (H, W).
16-bit images (DICOM-derived PNG/TIFF) are min-max windowed to 0-255 per image, since their
useful range rarely spans the full 16 bits. DICOM files (by name or by their ``DICM`` marker)
go through ``cxr.data.dicom``, which applies their own rescale, window and polarity.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np

from cxr.data.dicom import DicomConfig, decode_dicom, is_dicom
from cxr.errors import DataError
from cxr.registry import Registry

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
RESIZE_POLICIES = Registry("resize policy")
ResizePolicy = RESIZE_POLICIES.choice()
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale a non-uint8 image to uint8 by its own min and max."""
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float32)
    low, high = float(image.min()), float(image.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    return ((image - low) * scale).round().astype(np.uint8)


def to_gray(image: np.ndarray) -> np.ndarray:
    """Gray from OpenCV's gray/BGR/BGRA layouts (alpha is dropped)."""
    if image.ndim == 2:
        return image
    channels = image.shape[2]
    if channels == 1:
        return image[:, :, 0]
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"cannot convert an image with {channels} channels to gray")


def to_gray_batch(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) RGB(A) uint8 array to (N, H, W) gray, ITU-R 601 weights."""
    gray = images[..., :3].astype(np.float32) @ _GRAY_WEIGHTS
    return gray.round().clip(0, 255).astype(np.uint8)


def colourfulness(image: np.ndarray) -> float:
    """Mean over pixels of the widest spread between colour channels, in 8-bit levels (0 for gray)."""
    if image.ndim == 2 or image.shape[2] < 3:
        return 0.0
    colour = to_uint8(image[:, :, :3]).astype(np.int16)
    return float((colour.max(axis=2) - colour.min(axis=2)).mean())


def is_dicom_file(path: str | Path) -> bool:
    """DICOM by name or marker, never opening a file with a raster image suffix."""
    return Path(path).suffix.lower() not in IMAGE_EXTENSIONS and is_dicom(path)


def decode_source(path: str | Path, dicom: DicomConfig = DicomConfig(),
                  name: str | None = None) -> tuple[np.ndarray, float]:
    """An image or DICOM file as uint8 (H, W) plus its colourfulness before gray conversion;
    DataError naming the file (or ``name``) if it is missing or cannot be read."""
    name = name or str(path)
    if not Path(path).is_file():
        raise DataError(f"no such image file: {name}")
    if is_dicom_file(path):
        return decode_dicom(path, dicom, name), 0.0
    return decode_raster(np.fromfile(str(path), dtype=np.uint8), name)


def decode_bytes(data: bytes, name: str, dicom: DicomConfig = DicomConfig()) -> tuple[np.ndarray, float]:
    """An encoded image or DICOM file's bytes (e.g. sent to the server) as ``decode_source``
    returns them; DataError naming ``name`` (never the bytes) if they cannot be decoded."""
    if data[128:132] == b"DICM":
        return decode_dicom(io.BytesIO(data), dicom, name), 0.0
    return decode_raster(np.frombuffer(data, dtype=np.uint8), name)


def decode_raster(data: np.ndarray, name: str) -> tuple[np.ndarray, float]:
    """PNG/JPEG/TIFF/BMP bytes (8 or 16 bit, any channels) as uint8 gray plus colourfulness."""
    if data.size == 0:
        raise DataError(f"zero-byte image file: {name}")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise DataError(f"corrupt or unreadable image file: {name}")
    return to_gray(to_uint8(image)), colourfulness(image)


def decode_gray(path: str | Path, dicom: DicomConfig = DicomConfig()) -> np.ndarray:
    """Read an image or DICOM file as uint8 (H, W); raise DataError naming the file if it cannot."""
    return decode_source(path, dicom)[0]


@RESIZE_POLICIES.register("pad")
def pad_square(image: np.ndarray) -> np.ndarray:
    """Zero-pad the short side, centred: the whole image is kept."""
    h, w = image.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return cv2.copyMakeBorder(image, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=0)


@RESIZE_POLICIES.register("crop")
def crop_square(image: np.ndarray) -> np.ndarray:
    """Center-crop the long side."""
    h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top:top + side, left:left + side]


def resize_square(image: np.ndarray, size: int, policy: str = "pad") -> np.ndarray:
    """Make ``image`` square by ``policy`` (a registered resize policy), then resize to ``size``."""
    image = RESIZE_POLICIES.create(policy, image)
    if image.shape[0] == size:
        return np.ascontiguousarray(image)
    interpolation = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)
