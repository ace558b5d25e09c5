"""Served requests: images sent as base64 file bytes (8-bit PNG, JPEG, 16-bit PNG, DICOM) score
exactly as the same files read from disk; a bad row is answered with its error while the others
are scored; a malformed request is one RequestError line that never repeats the request's data."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxr.errors import DataError, RequestError
from cxr.infer.ensemble import EnsembleModel
from cxr.infer.serving import example_request, predict_files, predict_request, request_sources, serve_params
from tests.dicom_files import write_dicom
from tests.helpers import random_checkpoint

LABELS = ["a", "b"]


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def files(real_data_dir: Path, tmp_path_factory) -> list[Path]:
    """A real JPEG and an 8-bit PNG, a generated 16-bit PNG and a 12-bit DICOM of a real X-ray."""
    folder = tmp_path_factory.mktemp("request")
    jpeg = sorted((real_data_dir / "kermany-pneumonia-224" / "train" / "NORMAL").iterdir())[0]
    png = sorted((real_data_dir / "nih1000-64" / "images").glob("*.png"))[0]
    sixteen = folder / "sixteen.png"
    ramp = np.linspace(1000, 60000, 50)[None, :] + np.random.default_rng(0).normal(0, 500, (40, 50))
    cv2.imwrite(str(sixteen), ramp.clip(0, 65535).astype(np.uint16))
    xray = cv2.imread(str(jpeg), cv2.IMREAD_GRAYSCALE)
    dicom = write_dicom(folder / "x.dcm", xray, "explicit", bits=12, window=True)
    return [jpeg, png, sixteen, Path(dicom)]


def test_base64_images_score_as_the_same_files(files: list[Path]):
    checkpoint = random_checkpoint(0, 48)
    expected = predict_files(checkpoint, [str(f) for f in files], [f.name for f in files])
    request = pd.DataFrame({"id": [f.name for f in files], "image": [b64(f) for f in files]})
    got = predict_request(checkpoint, request)
    assert got["id"].tolist() == [f.name for f in files]
    np.testing.assert_allclose(got[LABELS].to_numpy(), expected[LABELS].to_numpy(), atol=1e-6)
    assert got["error"].tolist() == [""] * 4
    assert got["flag_reason"].tolist() == expected["flag_reason"].tolist()


def test_a_bad_row_gets_its_error_and_the_others_are_answered(files: list[Path], tmp_path: Path):
    checkpoint = random_checkpoint(1, 48)
    good = [b64(files[0]), b64(files[3])]
    truncated = base64.b64encode(files[0].read_bytes()[:40]).decode()
    request = pd.DataFrame({"image": [good[0], base64.b64encode(b"not an image").decode(), None, truncated, good[1]],
                            "path": [None, None, str(tmp_path / "missing.png"), None, None]})
    got = predict_request(checkpoint, request)
    alone = predict_request(checkpoint, pd.DataFrame({"image": good}))
    np.testing.assert_allclose(got.loc[[0, 4], LABELS].to_numpy(), alone[LABELS].to_numpy(), atol=1e-6)
    assert got.loc[[1, 2, 3], LABELS].isna().all().all()
    assert got["error"].tolist() == ["", "corrupt or unreadable image file: row 1", "no such image file: row 2",
                                     "corrupt or unreadable image file: row 3", ""]
    assert got["flag"].tolist() == [got["flag"][0], True, True, True, got["flag"][4]]
    assert (got.loc[[1, 2, 3], "flag_reason"] == "unreadable").all()
    assert "missing.png" not in " ".join(got["error"])
    assert got["id"].tolist() == ["0", "1", str(tmp_path / "missing.png"), "3", "4"]


def test_positives_of_a_bad_row_are_missing_not_negative(files: list[Path]):
    checkpoint = random_checkpoint(2, 48)
    checkpoint = checkpoint.__class__(checkpoint.state_dict, checkpoint.meta.model_copy(
        update={"operating_points": {"thresholds": {"f1": {"a": 0.0, "b": 1.1}}}}))
    got = predict_request(checkpoint, pd.DataFrame({"image": [b64(files[1]), "AAAA"]}),
                          {"operating_point": "f1", "guardrails": False})
    assert got["a_positive"].tolist()[0] is True and got["b_positive"].tolist()[0] is False
    assert got["a_positive"].isna().tolist() == [False, True] and got["b_positive"].isna().tolist() == [False, True]


def test_an_all_bad_request_is_still_answered_row_by_row():
    got = predict_request(random_checkpoint(0, 32), pd.DataFrame({"image": ["AAAA", "AAAA"]}))
    assert got[LABELS].isna().all().all() and got["flag"].all()
    assert got["error"].str.startswith("corrupt or unreadable").all()


def test_an_ensemble_serves_bytes_like_its_files(files: list[Path]):
    members = {"x": random_checkpoint(3, 48), "y": random_checkpoint(4, 32)}
    model = EnsembleModel(members, np.full((2, 2), 0.5))
    expected = predict_files(model, [str(f) for f in files[:2]])
    got = predict_request(model, pd.DataFrame({"image": [b64(f) for f in files[:2]] + ["AAAA"]}))
    np.testing.assert_allclose(got[LABELS].to_numpy()[:2], expected[LABELS].to_numpy(), atol=1e-6)
    assert got["error"].tolist()[2] == "corrupt or unreadable image file: row 2"


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"file": ["x.png"]}), "needs an 'image' (base64 file bytes) or 'path' column"),
    (pd.DataFrame({"image": ["iVBORw0KGgo=", "!!notbase64!!"]}), "row 1: image is not valid base64"),
    (pd.DataFrame({"image": [None], "path": [None]}), "row 0 has neither an image nor a path"),
    (pd.DataFrame({"image": [12345]}), "row 0: image must be a base64 string, not int"),
])
def test_malformed_requests_are_one_line_without_their_data(frame: pd.DataFrame, message: str):
    with pytest.raises(RequestError) as error:
        predict_request(random_checkpoint(0, 32), frame)
    text = str(error.value)
    assert message in text and "\n" not in text
    assert "notbase64" not in text and "x.png" not in text and "12345" not in text


@pytest.mark.parametrize("params, message", [
    ({"view": ["original"]}, "unknown param(s) ['view']"),
    ({"views": ["original", "spin"]}, "unknown TTA view(s) ['spin']"),
    ({"batch_size": 0}, "'batch_size' must be an integer from 1 to 1024"),
    ({"batch_size": True}, "'batch_size' must be an integer"),
    ({"guardrails": "yes"}, "'guardrails' must be true or false"),
])
def test_bad_params_are_request_errors(params: dict, message: str):
    with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        serve_params(params)


def test_params_default_and_a_single_view_name_is_a_list():
    assert serve_params(None) == {"views": ["original"], "batch_size": 64, "guardrails": True, "operating_point": ""}
    assert serve_params({"views": "hflip"})["views"] == ["hflip"]


def test_line_wrapped_base64_and_data_uris_decode(files: list[Path]):
    raw = files[0].read_bytes()
    wrapped = base64.encodebytes(raw).decode()  # 76-character lines, as `base64` writes them
    assert "\n" in wrapped
    sources, ids = request_sources(pd.DataFrame({"image": [wrapped, "data:image/jpeg;base64," + b64(files[0])]}))
    assert sources == [raw, raw] and ids == ["0", "1"]


def test_the_example_request_is_a_generated_png_that_scores():
    example = example_request()
    image = cv2.imdecode(np.frombuffer(base64.b64decode(example["image"][0]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.shape == (64, 64) and image.dtype == np.uint8 and len(np.unique(image)) > 20
    got = predict_request(random_checkpoint(0, 32), example)
    assert got["error"].tolist() == [""] and got[LABELS].notna().all().all()


def test_predict_files_still_raises_for_an_unreadable_file(tmp_path: Path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"1 image\(s\) could not be decoded:\n  corrupt or unreadable image file: .*bad.png"):
        predict_files(random_checkpoint(0, 32), [str(bad)])


def test_an_unknown_operating_point_is_a_request_error_that_does_not_repeat_it():
    with pytest.raises(RequestError, match=r"unknown operating point; this model has \[\]") as error:
        predict_request(random_checkpoint(0, 32), pd.DataFrame({"image": ["AAAA"]}), {"operating_point": "youden"})
    assert "youden" not in str(error.value)


def test_ids_keep_zero_and_integers_made_float_by_a_gap(files: list[Path]):
    frame = pd.DataFrame({"id": [0, 5, None], "image": [b64(files[0])] * 3})
    assert request_sources(frame)[1] == ["0", "5", "2"]


@pytest.mark.parametrize("frame, params, message", [
    (pd.DataFrame([["AAAA", "AAAA"]], columns=["image", "image"]), None, "names a column twice"),
    (pd.DataFrame({"image": ["AAAA"]}), {"views": ["original"] * 6}, "lists 6 views; there are 5"),
    (pd.DataFrame({"image": ["AAAA"]}), ["views"], "params must be an object"),
])
def test_duplicate_columns_too_many_views_and_non_object_params_are_request_errors(frame, params, message: str):
    with pytest.raises(RequestError, match=message):
        predict_request(random_checkpoint(0, 32), frame, params)


def test_any_decoder_failure_is_the_rows_error(files: list[Path], monkeypatch):
    from cxr.data import preprocess

    real = preprocess.decode_bytes

    def decode(data: bytes, name: str, dicom):
        if data == b"boom":
            raise RuntimeError("decoder crashed at /srv/secret")
        return real(data, name, dicom)

    monkeypatch.setattr(preprocess, "decode_bytes", decode)
    request = pd.DataFrame({"image": [base64.b64encode(b"boom").decode(), b64(files[0])]})
    got = predict_request(random_checkpoint(0, 32), request)
    assert got["error"].tolist() == ["row 0 could not be decoded (RuntimeError)", ""]


def test_a_server_can_refuse_paths_and_a_null_param_takes_its_default(files: list[Path]):
    with pytest.raises(RequestError, match="takes images as base64 bytes"):
        predict_request(random_checkpoint(0, 32), pd.DataFrame({"path": [str(files[0])]}), allow_paths=False)
    got = predict_request(random_checkpoint(0, 32), pd.DataFrame({"image": [b64(files[0])], "path": [None]}),
                          {"batch_size": None}, allow_paths=False)
    assert got["error"].tolist() == [""]
