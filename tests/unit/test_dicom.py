"""DICOM input: pixel handling against hand-computed values, every transfer syntax against its
source image, ids as keyed hashes, folder discovery; and the ingest edge cases of a hospital
export (nested folders, broken symlinks, empty id cells) as errors that name what is wrong."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from cxr.data.decode import decode_gray
from cxr.data.dicom import DicomConfig, age_band, decode_dicom, is_dicom, salted_id
from cxr.data.ingest import IngestConfig, read_source
from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.errors import DataError
from tests.dicom_files import PHI, TRANSFER_SYNTAXES, dataset, write_dicom

LOSSLESS = [s for s in TRANSFER_SYNTAXES if s != "jpeg_baseline"]
STORAGE = [dict(bits=8), dict(bits=10), dict(bits=12, window=True), dict(bits=16, monochrome1=True, window=True),
           dict(bits=12, signed=True, window=True), dict(bits=12, slope=2.0, intercept=-1024.0, window=True),
           dict(bits=12, voi_lut=True), dict(bits=16, signed=True, voi_lut=True, monochrome1=True)]


@pytest.fixture(autouse=True)
def salt(monkeypatch) -> None:
    monkeypatch.setenv("CXR_ID_SALT", "test-site-secret")


@pytest.fixture(scope="module")
def xray(real_data_dir) -> np.ndarray:
    path = sorted((real_data_dir / "kermany-pneumonia-224" / "train" / "PNEUMONIA").iterdir())[0]
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def stretched(image: np.ndarray) -> np.ndarray:
    """``image`` min-max stretched to 0-255, as a DICOM without VOI tags is shown."""
    low, high = float(image.min()), float(image.max())
    return np.round((image.astype(np.float64) - low) * 255 / (high - low)).astype(np.uint8)


@pytest.mark.parametrize("syntax", LOSSLESS)
@pytest.mark.parametrize("storage", STORAGE, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_lossless_dicom_decodes_to_its_source(tmp_path, xray, syntax, storage) -> None:
    # With window or VOI LUT tags spanning the stored range the display chain returns the 8-bit
    # source exactly. Without them the viewer stretches min-max (computed here by hand from the
    # 8-bit source): storing at 10-16 bits rounds each value, so one gray level at most.
    path = write_dicom(tmp_path / "x.dcm", xray, syntax, **storage)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]
    image = decode_gray(path)
    assert image.dtype == np.uint8 and image.shape == xray.shape
    if storage.get("window") or storage.get("voi_lut"):
        np.testing.assert_array_equal(image, xray)
    else:
        error = np.abs(image.astype(int) - stretched(xray).astype(int))
        assert error.max() <= 1 and error.mean() < 0.25


def test_jpeg_baseline_is_within_its_compression_error(tmp_path, xray) -> None:
    # Quality-95 JPEG is lossy: a few gray levels at edges, under one level on average.
    image = decode_gray(write_dicom(tmp_path / "x.dcm", xray, "jpeg_baseline"))
    error = np.abs(image.astype(int) - stretched(xray).astype(int))
    assert error.mean() < 1.0 and np.percentile(error, 99) <= 4


def test_window_matches_values_computed_by_hand(tmp_path) -> None:
    # 12-bit values, window centre 2048 width 2048: below 1023 black, above 3071 white,
    # between ((v - 2047.5) / 2047 + 0.5) * 255 rounded (PS3.3 C.11.2.1.2.1).
    values = np.array([[0, 1023, 1500, 2048], [2600, 3071, 3072, 4095]], np.uint16)
    ds = dataset(np.zeros((2, 4), np.uint8), bits=12)
    ds.PixelData, ds.WindowCenter, ds.WindowWidth = values.tobytes(), 2048, 2048
    ds.save_as(tmp_path / "w.dcm", enforce_file_format=True)
    by_hand = [[0, 0, round((1500 - 2047.5) / 2047 * 255 + 127.5), round(0.5 / 2047 * 255 + 127.5)],
               [round((2600 - 2047.5) / 2047 * 255 + 127.5), 255, 255, 255]]
    np.testing.assert_array_equal(decode_dicom(tmp_path / "w.dcm"), by_hand)


def test_rescale_then_monochrome1_inverts_so_bone_is_bright(tmp_path) -> None:
    # slope 2, intercept -1000 over stored 0..3 gives -1000..-994; min-max then inversion.
    ds = dataset(np.zeros((1, 4), np.uint8), bits=12, monochrome1=True)
    ds.PixelData = np.array([[0, 1, 2, 3]], np.uint16).tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.save_as(tmp_path / "m1.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(decode_dicom(tmp_path / "m1.dcm"), [[255, 170, 85, 0]])


def test_voi_modes_choose_lut_window_or_none(tmp_path, xray) -> None:
    # A file with an inverting VOI LUT and a narrow window: each mode shows a different picture.
    ds = dataset(xray, bits=12, voi_lut=True)
    lut = ds.VOILUTSequence[0]
    lut["LUTData"].value = np.frombuffer(lut.LUTData, "<u2")[::-1].astype("<u2").tobytes()
    ds.WindowCenter, ds.WindowWidth = 2048, 1024
    ds.save_as(tmp_path / "v.dcm", enforce_file_format=True)
    decode = {mode: decode_dicom(tmp_path / "v.dcm", DicomConfig(voi=mode)) for mode in ("auto", "window", "none")}
    np.testing.assert_array_equal(decode["auto"], 255 - xray)
    assert np.abs(decode["none"].astype(int) - stretched(xray)).max() <= 1
    assert (decode["window"] == 0).mean() > (xray < 64).mean() - 0.01 and (decode["window"] == 255).any()


def test_multiframe_is_refused_or_its_first_frame_taken(tmp_path, xray) -> None:
    path = tmp_path / "cine.dcm"
    dataset(xray, bits=12, window=True, frames=3).save_as(path, enforce_file_format=True)
    with pytest.raises(DataError, match=r"cine\.dcm is a multi-frame DICOM \(3 frames\)"):
        decode_dicom(path)
    with pytest.warns(UserWarning, match="first frame"):
        np.testing.assert_array_equal(decode_dicom(path, DicomConfig(multiframe="first")), xray)


def test_corrupt_and_pixelless_dicoms_name_the_file(tmp_path, xray) -> None:
    whole = write_dicom(tmp_path / "whole.dcm", xray, bits=12, window=True).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom at all" * 20)
    ds = dataset(xray)
    del ds.PixelData
    ds.save_as(tmp_path / "empty.dcm", enforce_file_format=True)
    for name in ("cut.dcm", "junk.dcm", "empty.dcm"):
        with pytest.raises(DataError, match=name):
            decode_gray(tmp_path / name)


def test_preprocess_config_reaches_the_decoder(tmp_path, xray) -> None:
    (tmp_path / "imgs").mkdir()
    dataset(xray, bits=12, window=True, frames=2).save_as(tmp_path / "imgs" / "a.dcm", enforce_file_format=True)
    data = read_source(IngestConfig(source="images", path=str(tmp_path / "imgs")))
    with pytest.raises(DataError, match="multi-frame"):
        preprocess_imageset(data, PreprocessConfig(image_size=64, clahe=False), progress=False)
    with pytest.warns(UserWarning):
        out = preprocess_imageset(data, PreprocessConfig(image_size=64, clahe=False, dicom={"multiframe": "first"}),
                                  progress=False)
    assert out.images.shape == (1, 64, 64)


def test_folders_find_dicoms_by_name_or_preamble_and_hash_their_ids(tmp_path, xray) -> None:
    root = tmp_path / "site"
    write_dicom(root / "NORMAL" / "a.dcm", xray, bits=12, window=True)
    write_dicom(root / "NORMAL" / "b.dcm", xray, bits=12, window=True, tags={"PatientID": "OTHER"})
    write_dicom(root / "PNEUMONIA" / "1.2.840.99", xray, "rle", bits=16, window=True)
    write_dicom(root / "PNEUMONIA" / "IM0001", xray, "jpeg_ls", bits=12, window=True)
    (root / "PNEUMONIA" / "notes.txt").write_text("not an image")
    data = read_source(IngestConfig(source="folders", path=str(root), negative_class="NORMAL"))
    assert len(data) == 4 and data.labels[:, 0].tolist() == [0, 0, 1, 1]
    uids = [pydicom.dcmread(p).SOPInstanceUID for p in data.manifest["path"]]
    assert data.ids == [salted_id(u, b"test-site-secret") for u in uids]
    assert data.manifest["patient_id"].nunique() == 2  # three files share PHI's PatientID
    assert data.manifest[["view", "modality", "sex", "age_band", "manufacturer"]].drop_duplicates().values.tolist() == \
        [["PA", "DX", "F", "40-59", "Acme"]]
    text = data.label_frame().drop(columns="path").to_csv()
    assert not any(value in text for value in PHI.values()) and not any(u in text for u in uids)
    images = preprocess_imageset(data, PreprocessConfig(image_size=224, clahe=False), progress=False).images
    np.testing.assert_array_equal(images[2], xray)


def test_ids_depend_on_the_salt_and_a_missing_salt_is_a_clear_error(tmp_path, xray, monkeypatch) -> None:
    write_dicom(tmp_path / "imgs" / "a.dcm", xray, bits=12, window=True)
    cfg = IngestConfig(source="images", path=str(tmp_path / "imgs"))
    first = read_source(cfg).ids
    monkeypatch.setenv("CXR_ID_SALT", "another-site")
    assert read_source(cfg).ids != first
    monkeypatch.delenv("CXR_ID_SALT")
    with pytest.raises(DataError, match="CXR_ID_SALT"):
        read_source(cfg)
    (tmp_path / "salt").write_text("test-site-secret\n")
    assert read_source(cfg.model_copy(update={"id_salt_file": str(tmp_path / "salt")})).ids == first


def test_view_positions_filter_reads_the_view_tag(tmp_path, xray) -> None:
    for i, view in enumerate(["PA", "AP", "LL", "PA"]):
        write_dicom(tmp_path / "imgs" / f"{i}.dcm", xray, tags={"ViewPosition": view})
    data = read_source(IngestConfig(source="images", path=str(tmp_path / "imgs"), filter={"view_positions": ["pa"]}))
    assert [Path(p).name for p in data.manifest["path"]] == ["0.dcm", "3.dcm"]
    cv2.imwrite(str(tmp_path / "imgs" / "x.png"), xray)
    with pytest.raises(DataError, match=r"x\.png is not a DICOM file"):
        read_source(IngestConfig(source="images", path=str(tmp_path / "imgs"), filter={"view_positions": ["PA"]}))


def test_nested_folders_are_named_or_read_when_recursive(tmp_path, xray) -> None:
    for name in ("NORMAL", "PNEUMONIA"):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / f"top_{name}.png"), xray)
    (tmp_path / "PNEUMONIA" / "2024").mkdir()
    write_dicom(tmp_path / "PNEUMONIA" / "2024" / "deep.dcm", xray)
    cfg = IngestConfig(source="folders", path=str(tmp_path), negative_class="NORMAL")
    with pytest.raises(DataError, match=r"recursive: true.*\n.*PNEUMONIA/2024"):
        read_source(cfg)
    data = read_source(cfg.model_copy(update={"recursive": True}))
    assert len(data) == 3 and "top_NORMAL" in data.ids


def test_a_broken_symlink_is_named(tmp_path, xray) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), xray)
    os.symlink(tmp_path / "gone.png", tmp_path / "b.png")
    with pytest.raises(DataError, match=r"broken symlink.*\n.*b\.png"):
        read_source(IngestConfig(source="images", path=str(tmp_path)))


def test_is_dicom_and_age_band() -> None:
    assert is_dicom("x.DCM") and not is_dicom("/no/such/file")
    assert [age_band(a) for a in ("045Y", "017Y", "006M", "080Y", "", "45")] == ["40-59", "0-17", "0-17", "80+", "", ""]


def test_an_empty_id_or_path_cell_names_its_line(tmp_path, xray) -> None:
    cv2.imwrite(str(tmp_path / "a.jpeg"), xray)
    (tmp_path / "labels.csv").write_text("id,pneumonia\na,1\n,0\n")
    with pytest.raises(DataError, match=r"labels\.csv line 3: empty 'id' cell"):
        read_source(IngestConfig(source="csv", path=str(tmp_path / "labels.csv"), image_dir=str(tmp_path),
                                 image_suffix=".jpeg"))
    (tmp_path / "nih.csv").write_text("Image Index,Finding Labels,Patient ID\na.jpeg,No Finding,1\n ,Mass,2\n")
    with pytest.raises(DataError, match=r"nih\.csv line 3: empty 'Image Index' cell"):
        read_source(IngestConfig(source="nih", path=str(tmp_path / "nih.csv"), image_dir=str(tmp_path)))
