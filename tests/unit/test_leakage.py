"""Leakage audit on real Kermany images: copies in another part are caught (flip, JPEG, crop,
same pixels under another id, shared patient), different patients are not; distances
against imagehash's and numpy's own; actions, counts, hashed ids, the example grid."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import cv2
import imagehash
import numpy as np
import pytest
from PIL import Image

from cxr.data import leakage
from cxr.data.decode import decode_gray
from cxr.data.imageset import ImageSet, make_manifest
from cxr.data.leakage import (AuditConfig, act_on_leaks, find_leaks, fingerprints, hash_distances, hashed_id,
                              leak_counts, leak_pairs_grid, near_matches, pixel_distances)
from cxr.data.preprocess import PreprocessConfig, prepare_image
from cxr.errors import DataError

PATIENT = re.compile(r"^(person\d+)")
PREPROCESS = PreprocessConfig(image_size=96)


def imageset(images: np.ndarray, ids: list[str], patients: list[str] | None = None) -> ImageSet:
    """An unlabelled ImageSet of decoded ``images``."""
    n = len(images)
    return ImageSet(make_manifest(ids, [f"{i}.png" for i in ids], patients), (), np.zeros((n, 0), np.float32),
                    np.zeros((n, 0), bool), np.asarray(images, np.uint8))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_GRAYSCALE)


@pytest.fixture(scope="module")
def raw(real_data_dir: Path) -> dict[str, np.ndarray]:
    """The first image of each of 16 Kermany patients, decoded at 224 px, by patient id."""
    out: dict[str, np.ndarray] = {}
    for path in sorted((real_data_dir / "kermany-pneumonia-224" / "train" / "PNEUMONIA").glob("*.jpeg")):
        patient = PATIENT.match(path.name).group(1)
        if patient not in out:
            out[patient] = decode_gray(path)
        if len(out) == 16:
            return out
    raise AssertionError("fewer than 16 patients")


@pytest.fixture(scope="module")
def parts(raw: dict[str, np.ndarray]) -> dict[str, ImageSet]:
    """train: 10 patients; test: a flipped, a JPEG-50 and a 2 px-cropped copy of train 0-2, then
    6 other patients; proxy: train 3's pixels under another id, and train 4's patient."""
    patients = list(raw)
    prepared = [prepare_image(raw[p], PREPROCESS) for p in patients]
    copies = [raw[patients[0]][:, ::-1], jpeg(raw[patients[1]], 50), raw[patients[2]][2:-2, 2:-2]]
    test = [prepare_image(np.ascontiguousarray(c), PREPROCESS) for c in copies] + prepared[10:]
    return {"train": imageset(prepared[:10], patients[:10], patients[:10]),
            "test": imageset(test, [f"test_{i}" for i in range(9)]),
            "proxy": imageset([prepared[3], prepared[12]], ["proxy_0", "proxy_1"], ["other", patients[4]])}


@pytest.fixture(scope="module")
def leaks(parts: dict[str, ImageSet]):
    return find_leaks(parts, AuditConfig())


def rows(frame, kind: str, a: str, b: str) -> list[tuple[int, int]]:
    found = frame[(frame["kind"] == kind) & (frame["part_a"] == a) & (frame["part_b"] == b)]
    return sorted(zip(found["index_a"], found["index_b"]))


def test_flip_jpeg_and_crop_copies_are_near_and_other_patients_are_not(leaks):
    assert rows(leaks, "near", "train", "test") == [(0, 0), (1, 1), (2, 2)]
    near = leaks[leaks["kind"] == "near"]
    cfg = AuditConfig()
    assert (near["hash_distance"] <= cfg.hash_max_distance).all()
    assert (near["pixel_distance"] <= cfg.pixel_max_distance).all()
    assert (near["pixel_distance"] > 0).all()  # not the same pixels: near, not exact


def test_same_pixels_under_another_id_are_exact_not_near(leaks):
    assert rows(leaks, "exact", "train", "proxy") == [(3, 0)]
    exact = leaks[leaks["kind"] == "exact"]
    assert exact[["hash_distance", "pixel_distance"]].to_numpy().tolist() == [[0.0, 0.0]] * 2
    assert rows(leaks, "near", "train", "proxy") == []


def test_shared_patient_is_flagged_and_a_copy_shows_in_the_later_part_only(leaks):
    assert rows(leaks, "patient", "train", "proxy") == [(4, 1)]
    assert rows(leaks, "exact", "test", "proxy") == [(5, 1)]  # test 5 and proxy 1 are one image
    assert set(leaks["kind"] + " " + leaks["part_a"] + "~" + leaks["part_b"]) == {
        "near train~test", "exact train~proxy", "patient train~proxy", "exact test~proxy"}


def test_counts_are_flat_totals_and_per_pair(leaks):
    assert leak_counts(leaks) == {"patient": 1, "exact": 2, "near": 3, "exact/test~proxy": 1,
                                  "exact/train~proxy": 1, "near/train~test": 3, "patient/train~proxy": 1}


def test_ids_are_hashed(leaks, parts):
    raw_ids = {i for part in parts.values() for i in part.ids} | set(parts["train"].manifest["patient_id"])
    cells = {str(cell) for cell in leaks.to_numpy().ravel()}
    assert not raw_ids & cells
    assert not any(raw in cell for raw in raw_ids for cell in cells)
    first = leaks.iloc[0]
    assert first["id_a"] == hashed_id(parts[first["part_a"]].ids[first["index_a"]])
    assert re.fullmatch(r"[0-9a-f]{12}", first["id_b"])


def test_distances_match_imagehash_and_numpy(parts):
    images = parts["test"].images[:4]
    prints = fingerprints(images)
    expected = [[min(imagehash.phash(Image.fromarray(a)) - imagehash.phash(Image.fromarray(v))
                     for v in (b, np.ascontiguousarray(b[:, ::-1]))) for a in images] for b in images]
    np.testing.assert_array_equal(hash_distances(prints, prints), expected)
    side = (leakage.THUMBNAIL_SIZE,) * 2
    small, flipped = ([cv2.resize(np.ascontiguousarray(v), side, interpolation=cv2.INTER_AREA).ravel().astype(float)
                       for v in views] for views in (images, images[:, :, ::-1]))
    r = [[max(np.corrcoef(a, b)[0, 1], np.corrcoef(a, f)[0, 1]) for a in small] for b, f in zip(small, flipped)]
    np.testing.assert_allclose(pixel_distances(prints, prints), 1 - np.array(r), atol=1e-5)


def test_chunked_search_finds_the_same_matches(parts, monkeypatch):
    a, b = fingerprints(parts["train"].images), fingerprints(parts["test"].images)
    whole = near_matches(a, b, AuditConfig())
    monkeypatch.setattr(leakage, "_CHUNK_CELLS", 7)  # one B row per chunk
    chunked = near_matches(a, b, AuditConfig())
    for got, expected in zip(chunked[:3], whole[:3]):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(chunked[3], whole[3], atol=1e-6)
    assert whole[1].tolist() == [0, 1, 2]


def test_fail_names_the_parts_and_counts_and_warn_warns(leaks):
    with pytest.raises(DataError, match=r"2 exact .* 3 near .* 1 shared patient") as error:
        act_on_leaks(leaks, AuditConfig(action="fail"))
    assert "train~test" in str(error.value) and "exact/train~proxy 1" in str(error.value)
    assert "audit.action: warn" in str(error.value)
    with pytest.warns(UserWarning, match=r"near/train~test 3"):
        act_on_leaks(leaks, AuditConfig(action="warn"))


def test_no_findings_do_nothing(parts):
    distinct = {"train": parts["train"].subset(range(3, 10)), "test": parts["test"].subset(range(3, 9))}
    found = find_leaks(distinct)
    assert found.empty and list(found.columns) == list(leakage.COLUMNS)
    assert leak_counts(found) == {"patient": 0, "exact": 0, "near": 0}
    assert leak_pairs_grid(distinct, found) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        act_on_leaks(found, AuditConfig(action="fail"))


def test_grid_draws_the_pairs(parts, leaks):
    image = leak_pairs_grid(parts, leaks, n=3)
    assert image.width > 400 and image.height > 150
    assert np.asarray(image.convert("L")).std() > 10  # images were drawn, not a blank canvas


def test_bad_parts_raise_naming_the_part(parts):
    small = imageset(parts["test"].images[:, :64, :64], [f"s{i}" for i in range(9)])
    with pytest.raises(DataError, match=r"part 'small' has \(64, 64\) images, part 'train' \(96, 96\)"):
        find_leaks({"train": parts["train"], "small": small})
    undecoded = parts["train"].with_images(None)
    with pytest.raises(DataError, match=r"part 'raw' has no decoded images"):
        find_leaks({"train": parts["train"], "raw": undecoded})


def test_config_takes_registered_actions_only():
    assert AuditConfig().action == "warn"
    with pytest.raises(ValueError, match=r"unknown leak action 'stop'; choose from \['fail', 'warn'\]"):
        AuditConfig(action="stop")
    with pytest.raises(ValueError, match="extra"):
        AuditConfig(feature_max_distance=1.0)
