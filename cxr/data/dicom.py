"""DICOM chest X-rays: pixels as a radiologist's viewer shows them, headers without patient data.

Pixels follow the DICOM display chain (PS3.3 C.11): stored values -> Modality LUT (or
RescaleSlope/Intercept) -> VOI (VOI LUT table or WindowCenter/WindowWidth) -> 8 bits, and
MONOCHROME1 is inverted so bone is bright as in MONOCHROME2. pydicom does each transform
(``pydicom.pixels``); compressed transfer syntaxes (JPEG baseline/extended/lossless, JPEG-LS,
JPEG 2000, RLE) decode through the python-gdcm plugin.

Headers are read only for the tags in ``WHITELISTED_TAGS`` plus the two identifiers, which
leave this module only as keyed hashes (``salted_id``), never as their values.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import warnings
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cxr.data.imageset import HEADER_COLUMNS, years_band
from cxr.errors import DataError
from cxr.registry import Registry

DICOM_SUFFIXES = (".dcm", ".dicom")
DicomSource = str | Path | BinaryIO
SALT_ENV = "CXR_ID_SALT"
WHITELISTED_TAGS = dict(zip(("ViewPosition", "Modality", "PatientSex", "PatientAge", "Manufacturer"), HEADER_COLUMNS))
_AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
VOI_MODES = Registry("DICOM VOI mode")
VoiMode = VOI_MODES.choice()
MULTIFRAME_POLICIES = Registry("DICOM multi-frame policy")
MultiframePolicy = MULTIFRAME_POLICIES.choice()


class DicomConfig(BaseModel):
    """How DICOM pixels become 8-bit images (``parameters.preprocess.dicom`` in YAML)."""

    model_config = ConfigDict(extra="forbid")

    voi: VoiMode = Field("auto", description="auto: VOI LUT, else window, else min-max; window: window tags "
                                             "only; none: min-max over the modality values")
    multiframe: MultiframePolicy = Field("refuse", description="refuse multi-frame files, or take the first frame")


def is_dicom(path: str | Path) -> bool:
    """A ``.dcm``/``.dicom`` name, or the ``DICM`` marker after the 128-byte preamble."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _read(source: DicomSource, name: str | None = None, **kwargs):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(source if hasattr(source, "read") else str(source), **kwargs)
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, KeyError) as error:
        raise DataError(f"corrupt or unreadable DICOM file: {name or source} ({type(error).__name__})") from error


@MULTIFRAME_POLICIES.register("refuse")
def refuse_multiframe(path: str | Path, frames: int) -> int:
    """Raise: a multi-frame file is not one radiograph."""
    raise DataError(f"{path} is a multi-frame DICOM ({frames} frames); set preprocess.dicom.multiframe: first "
                    "to take its first frame")


@MULTIFRAME_POLICIES.register("first")
def first_frame(path: str | Path, frames: int) -> int:
    """Take frame 0, with a warning naming the file."""
    warnings.warn(f"{path} is a multi-frame DICOM ({frames} frames): using its first frame", stacklevel=2)
    return 0


def _stored_pixels(ds, path: str | Path, cfg: DicomConfig) -> np.ndarray:
    """The stored values of the one frame to use: (H, W), or (H, W, 3) RGB for colour captures."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    options = {}
    if frames > 1:
        options["index"] = MULTIFRAME_POLICIES.create(cfg.multiframe, path, frames)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"):
        raise DataError(f"{path}: photometric interpretation {photometric} is not a grayscale or RGB radiograph")
    try:
        ds.pixel_array_options(**options)
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError, ValueError, AttributeError) as error:
        raise DataError(f"{path}: cannot decode its pixel data ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:200]})") from error
    if pixels.ndim not in (2, 3) or min(pixels.shape[:2]) == 0:
        raise DataError(f"{path}: pixel data of shape {pixels.shape} is not one 2-D image")
    return pixels


def _scaled(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``values`` in [low, high] mapped linearly onto 0-255."""
    scale = 255.0 / (high - low) if high > low else 0.0
    return ((np.asarray(values, np.float64) - low) * scale).round().clip(0, 255).astype(np.uint8)


def _minmax(values: np.ndarray) -> np.ndarray:
    return _scaled(values, float(values.min()), float(values.max()))


def _voi_lut(values: np.ndarray, ds) -> np.ndarray:
    """The first VOI LUT table, scaled from its nominal bit depth (LUTDescriptor[2])."""
    from pydicom.pixels import apply_voi

    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    return _scaled(apply_voi(np.round(values).astype(np.int64), ds), 0, 2 ** bits - 1)


def _window(values: np.ndarray, ds) -> np.ndarray:
    """The first window, scaled from the range pydicom maps it onto (the stored or rescaled range)."""
    from pydicom.pixels import apply_windowing

    low, high = apply_windowing(np.array([-1e300, 1e300]), ds)
    return _scaled(apply_windowing(values.astype(np.float64), ds), float(low), float(high))


def _has_window(ds) -> bool:
    return "WindowCenter" in ds and "WindowWidth" in ds


@VOI_MODES.register("auto")
def voi_auto(values: np.ndarray, ds) -> np.ndarray:
    """The VOI LUT table when present, else the window, else min-max."""
    if ds.get("VOILUTSequence"):
        return _voi_lut(values, ds)
    return _window(values, ds) if _has_window(ds) else _minmax(values)


@VOI_MODES.register("window")
def voi_window(values: np.ndarray, ds) -> np.ndarray:
    """WindowCenter/WindowWidth when present (a VOI LUT table is ignored), else min-max."""
    return _window(values, ds) if _has_window(ds) else _minmax(values)


@VOI_MODES.register("none")
def voi_none(values: np.ndarray, ds) -> np.ndarray:
    """Min-max over the modality values: no VOI."""
    return _minmax(values)


def decode_dicom(source: DicomSource, cfg: DicomConfig = DicomConfig(), name: str | None = None) -> np.ndarray:
    """One DICOM radiograph (a file, or an open binary stream) as uint8 (H, W), bone bright;
    DataError naming it (``name``, else the path) if it cannot be."""
    from pydicom.pixels import apply_modality_lut

    path = name or str(source)
    ds = _read(source, path)
    if "PixelData" not in ds:
        raise DataError(f"{path} is a DICOM file without pixel data")
    stored = _stored_pixels(ds, path, cfg)
    if stored.ndim == 3:
        gray = cv2.cvtColor(np.ascontiguousarray(stored[..., :3]), cv2.COLOR_RGB2GRAY)
        return gray if gray.dtype == np.uint8 else _minmax(gray)
    image = VOI_MODES.create(cfg.voi, apply_modality_lut(stored, ds), ds)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        image = 255 - image
    return np.ascontiguousarray(image)


def age_band(age: str) -> str:
    """The band of a DICOM age string (``045Y``, ``006M``...), or '' when absent or malformed."""
    match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", str(age or "").upper())
    if not match:
        return ""
    return years_band(int(match.group(1)) * _AGE_UNITS[match.group(2)])


def id_salt(salt_file: str | None = None) -> bytes:
    """The secret that keys id hashes: ``$CXR_ID_SALT``, else the content of ``salt_file``.

    Never a config value, so it cannot reach a ZenML run config or an artifact.
    """
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV].encode()
    if salt_file:
        path = Path(salt_file).expanduser()
        if not path.is_file() or not path.read_bytes().strip():
            raise DataError(f"data.id_salt_file {path} does not exist or is empty")
        return path.read_bytes().strip()
    raise DataError(f"DICOM ids are keyed hashes of SOPInstanceUID and PatientID: set ${SALT_ENV} to a site "
                    "secret (e.g. from a secret store) or data.id_salt_file to a file holding one")


def salted_id(value: str, salt: bytes) -> str:
    """16 hex digits of keyed blake2b: stable for one salt, not recoverable without it."""
    return hmac.new(salt, str(value).encode(), hashlib.blake2b).hexdigest()[:16]


def read_header(path: str | Path, salt: bytes) -> dict[str, str]:
    """Hashed ``image_id`` and ``patient_id`` plus the whitelisted tags of one file (no pixels read)."""
    ds = _read(path, stop_before_pixels=True)
    uid = str(ds.get("SOPInstanceUID", "") or "")
    if not uid:
        raise DataError(f"{path} has no SOPInstanceUID: cannot give it a stable id")
    patient = str(ds.get("PatientID", "") or "")
    header = {"image_id": salted_id(uid, salt), "patient_id": salted_id(patient or uid, salt)}
    for tag, key in WHITELISTED_TAGS.items():
        value = str(ds.get(tag, "") or "").strip()
        header[key] = age_band(value) if key == "age_band" else value.upper() if key in ("view", "sex") else value
    return header
