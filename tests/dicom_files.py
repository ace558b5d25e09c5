"""DICOM files written from 8-bit X-rays, for tests and bench/dicom.py.

``write_dicom`` stores an 8-bit image at 8 to 16 bits, signed or not, as MONOCHROME1 or 2, with
optional rescale, window or VOI LUT tags chosen so that the display chain gives back the 8-bit
source, then compresses it: RLE with pydicom's own encoder, JPEG baseline by encapsulating
OpenCV's JPEG, the other JPEG family members through python-gdcm.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1,
                         JPEGLSLossless, RLELossless, SecondaryCaptureImageStorage, generate_uid)

TRANSFER_SYNTAXES = {"explicit": ExplicitVRLittleEndian, "rle": RLELossless, "jpeg_baseline": JPEGBaseline8Bit,
                     "jpeg_lossless": JPEGLosslessSV1, "jpeg_ls": JPEGLSLossless, "jpeg2000": JPEG2000Lossless}
PHI = {"PatientName": "Zyxwv^Qutsr", "PatientID": "PID-9Q8W7E6R", "AccessionNumber": "ACC-5T4Y3U2I",
       "InstitutionName": "Hospital Plmokn Ijbuhv", "StudyDate": "19730412", "PatientBirthDate": "19421107"}


def value_range(bits: int, signed: bool) -> tuple[int, int]:
    """The lowest and highest value ``bits`` bits hold."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def stored_values(image: np.ndarray, bits: int, signed: bool, slope: float, intercept: float) -> np.ndarray:
    """Stored values whose modality output (``v * slope + intercept``) spans ``value_range`` as ``image`` spans 0-255."""
    low, high = value_range(bits, signed)
    return np.round((image.astype(np.float64) / 255 * (high - low) + low - intercept) / slope)


def dataset(image: np.ndarray, bits: int = 8, signed: bool = False, monochrome1: bool = False,
            slope: float = 1.0, intercept: float = 0.0, window: bool = False, voi_lut: bool = False,
            frames: int = 1, tags: dict | None = None) -> Dataset:
    """An uncompressed DX dataset holding ``image`` (uint8 H, W) at ``bits`` bits."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.PatientSex, ds.PatientAge, ds.Manufacturer = "DX", "PA", "F", "045Y", "Acme"
    for key, value in (PHI | (tags or {})).items():
        setattr(ds, key, value)
    source = 255 - image if monochrome1 else image
    values = stored_values(source, bits, signed, slope, intercept)
    low, high = value_range(bits, signed)
    if values.min() < low or values.max() > high:
        raise ValueError(f"slope {slope} / intercept {intercept} put stored values outside {bits} bits")
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}[
        (8 if bits <= 8 else 16, signed)]
    pixels = np.repeat(values.astype(dtype)[None], frames, 0) if frames > 1 else values.astype(dtype)
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = pixels.dtype.itemsize * 8, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if window:
        ds.WindowCenter, ds.WindowWidth = (low + high + 1) / 2, high - low + 1
    if voi_lut:
        depth, entries = 16 if bits > 8 else 8, high - low + 1
        item = Dataset()
        item.add_new(0x00283002, "SS" if low < 0 else "US", [entries % 65536, low, depth])  # LUTDescriptor
        item.add_new(0x00283006, "OW", np.round(np.linspace(0, 2 ** depth - 1, entries)).astype("<u2").tobytes())
        ds.VOILUTSequence = [item]
    ds.PixelData = pixels.tobytes()
    return ds


def write_dicom(path: Path, image: np.ndarray, syntax: str = "explicit", **kwargs) -> Path:
    """``dataset(image, **kwargs)`` saved to ``path`` in transfer syntax ``syntax`` (a TRANSFER_SYNTAXES key)."""
    ds = dataset(image, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    if syntax == "rle":
        ds.compress(RLELossless, encoding_plugin="pydicom")
    elif syntax == "jpeg_baseline":
        if ds.BitsStored != 8 or ds.PixelRepresentation:
            raise ValueError("JPEG baseline holds unsigned 8-bit pixels only")
        from pydicom.encaps import encapsulate

        ok, jpeg = cv2.imencode(".jpg", ds.pixel_array, [cv2.IMWRITE_JPEG_QUALITY, 95])
        ds.PixelData, ds["PixelData"].VR = encapsulate([jpeg.tobytes()]), "OB"
        ds.file_meta.TransferSyntaxUID, ds.LossyImageCompression = JPEGBaseline8Bit, "01"
    ds.save_as(path, enforce_file_format=True)
    if syntax in ("jpeg_lossless", "jpeg_ls", "jpeg2000"):
        _gdcm_compress(path, syntax)
    return path


def _gdcm_compress(path: Path, syntax: str) -> None:
    """Re-encode ``path`` in place with python-gdcm (pydicom has no JPEG lossless encoder)."""
    import gdcm

    codes = {"jpeg_lossless": gdcm.TransferSyntax.JPEGLosslessProcess14_1,
             "jpeg_ls": gdcm.TransferSyntax.JPEGLSLossless, "jpeg2000": gdcm.TransferSyntax.JPEG2000Lossless}
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise RuntimeError(f"gdcm cannot read {path}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(codes[syntax]))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"gdcm cannot encode {path} as {syntax}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"gdcm cannot write {path}")
