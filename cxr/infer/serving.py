"""Predict straight from image files with a checkpoint or an ensemble, preprocessing as each
model was trained, with the input guardrails' ``flag`` and ``flag_reason`` beside the scores and,
at a named operating point, ``<label>_positive``."""

from __future__ import annotations

import base64
import binascii
from typing import Sequence

import cv2
import numpy as np
import pandas as pd

from cxr.data.imageset import ImageSet, make_manifest
from cxr.data.preprocess import ImageSource, PreprocessConfig, preprocess_imageset, preprocess_sources
from cxr.errors import DataError, RequestError, list_problems
from cxr.infer.ensemble import EnsembleModel
from cxr.infer.guardrails import flagged_predictions, guard, guardrail_config
from cxr.infer.tta import SINGLE_VIEW, VIEWS, predict_imageset
from cxr.metrics.operating_points import check_point, positive_columns
from cxr.models.checkpoint import Checkpoint


def serving_preprocess(checkpoint: Checkpoint) -> PreprocessConfig:
    """The checkpoint's training preprocessing; a corrupt file is an error, never skipped. Where the
    pixels were stored in training does not matter here: requests stay in memory."""
    return PreprocessConfig(**{**checkpoint.meta.preprocess, "image_size": checkpoint.meta.image_size,
                               "skip_corrupt": False, "storage": "memory"})


def preprocess_files(checkpoint: Checkpoint, paths: Sequence[str], ids: Sequence[str] | None = None) -> ImageSet:
    """Decode and preprocess image files with the checkpoint's training settings."""
    ids = list(ids) if ids is not None else [str(p) for p in paths]
    manifest = make_manifest(ids, paths)
    imageset = ImageSet(manifest, (), np.zeros((len(ids), 0), np.float32), np.zeros((len(ids), 0), bool))
    return preprocess_imageset(imageset, serving_preprocess(checkpoint), progress=False)


ServedModel = Checkpoint | EnsembleModel
SERVE_PARAMS = {"views": list(SINGLE_VIEW), "batch_size": 64, "guardrails": True, "operating_point": ""}


def served_labels(model: ServedModel) -> list[str]:
    """The label columns a checkpoint or an ensemble predicts, in order."""
    return model.label_names if isinstance(model, EnsembleModel) else list(model.meta.label_names)


def served_operating_points(model: ServedModel) -> dict:
    """The thresholds a checkpoint or an ensemble carries by operating point (empty: none)."""
    return model.operating_points if isinstance(model, EnsembleModel) else model.meta.operating_points


def predict_files(model: ServedModel, paths: Sequence[str], ids: Sequence[str] | None = None,
                  views: Sequence[str] = SINGLE_VIEW, batch_size: int = 64, device: str = "auto",
                  guardrails: bool = True, operating_point: str | None = None) -> pd.DataFrame:
    """Decode, preprocess (the model's training settings) and predict image files (calibrated
    when the model is); with ``guardrails`` each row also gets ``flag`` and ``flag_reason`` (see
    ``cxr.infer.guardrails``), and with ``operating_point`` one ``<label>_positive`` per label.
    Any file that cannot be decoded is a DataError listing them all."""
    paths = [str(p) for p in paths]
    predictions = predict_sources(model, paths, ids if ids is not None else paths, paths, views, batch_size, device,
                                  guardrails, operating_point)
    errors = predictions["error"][predictions["error"] != ""].tolist()
    if errors:
        raise DataError(f"{len(errors)} image(s) could not be decoded:" + list_problems(errors))
    return predictions.drop(columns="error")


def predict_sources(model: ServedModel, sources: Sequence[ImageSource], ids: Sequence[str], names: Sequence[str],
                    views: Sequence[str] = SINGLE_VIEW, batch_size: int = 64, device: str = "auto",
                    guardrails: bool = True, operating_point: str | None = None) -> pd.DataFrame:
    """``predict_files`` for one file path or encoded file's bytes per row, going on past rows
    that cannot be decoded: those keep their row, with empty probabilities, ``flag`` true,
    ``flag_reason`` 'unreadable' and their ``error`` (naming the row by ``names``; '' elsewhere)."""
    points = served_operating_points(model)
    if operating_point:
        check_point(points, operating_point)  # before any decoding
    keys = [str(i) for i in range(len(sources))]  # row numbers: unique, whatever the ids
    members = model.members if isinstance(model, EnsembleModel) else {"model": model}
    decoded, errors = decode_members(members, sources, keys, names)
    good = [key for i, key in enumerate(keys) if i not in errors]
    decoded = {key: images.subset(np.flatnonzero(images.manifest["id"].isin(good))) for key, images in decoded.items()}
    labels = served_labels(model)
    predicted = (predict_members(model, members, decoded, views, batch_size, device, guardrails) if good
                 else pd.DataFrame(columns=["id", *labels] + (["flag", "flag_reason"] if guardrails else [])))
    frame = pd.DataFrame({"id": keys}).merge(predicted, on="id", how="left")
    frame["id"] = [str(i) for i in ids]
    frame[labels] = frame[labels].astype(np.float64)
    if guardrails:
        failed = frame["flag"].isna()
        frame["flag"] = frame["flag"].where(~failed, True).astype(bool)
        frame["flag_reason"] = frame["flag_reason"].where(~failed, "unreadable")
    frame["error"] = [errors.get(i, "") for i in range(len(keys))]
    if not operating_point:
        return frame
    return positive_columns(frame, points, operating_point, labels)


def decode_members(members: dict[str, Checkpoint], sources: Sequence[ImageSource], keys: Sequence[str],
                   names: Sequence[str]) -> tuple[dict[str, ImageSet], dict[int, str]]:
    """The sources decoded once per distinct member preprocessing (members trained alike share
    one decode), by that preprocessing's JSON, and each row's first error under any of them."""
    decoded: dict[str, ImageSet] = {}
    errors: dict[int, str] = {}
    for checkpoint in members.values():
        key = serving_preprocess(checkpoint).model_dump_json()
        if key not in decoded:
            decoded[key], failed = preprocess_sources(sources, names, keys, serving_preprocess(checkpoint))
            errors = failed | errors
    return decoded, dict(sorted(errors.items()))


def predict_members(model: ServedModel, members: dict[str, Checkpoint], decoded: dict[str, ImageSet],
                    views: Sequence[str], batch_size: int, device: str, guardrails: bool) -> pd.DataFrame:
    """Each member's predictions combined by the ensemble's weights (a lone checkpoint's as they
    are). An image is flagged when any member's guardrails flag it, and rejected when that member rejects."""
    frames, flags, reject = [], [], False
    for checkpoint in members.values():
        images = decoded[serving_preprocess(checkpoint).model_dump_json()]
        frames.append(predict_imageset(checkpoint, images, views, batch_size, device))
        if guardrails:
            flags.append(guard(checkpoint, images, device=device))
            reject |= guardrail_config(checkpoint).reject
    labels = served_labels(model)
    if isinstance(model, EnsembleModel):
        combined = model.combine([f[labels].to_numpy(np.float64) for f in frames])
        predictions = pd.DataFrame({"id": frames[0]["id"], **dict(zip(labels, combined.T))})
    else:
        predictions = frames[0]
    if not guardrails:
        return predictions
    if len(flags) == 1:
        return flagged_predictions(predictions, flags[0], labels, reject)
    reasons = [";".join(sorted({r for f in row for r in f.split(";") if r})) for row in
               zip(*(f["flag_reason"] for f in flags))]
    union = pd.DataFrame({"id": predictions["id"], "flag": [bool(r) for r in reasons], "flag_reason": reasons})
    return flagged_predictions(predictions, union, labels, reject)


def example_request(side: int = 64) -> pd.DataFrame:
    """A one-row request with a generated PNG (a vertical gradient with a bright disc): the
    logged input example, which must never be a patient's image."""
    rows, cols = np.mgrid[:side, :side]
    disc = (rows - side / 2) ** 2 + (cols - side / 2) ** 2 < (side / 4) ** 2
    image = (rows * 200 / side + 40 * disc).astype(np.uint8)
    _, png = cv2.imencode(".png", image)
    return pd.DataFrame({"id": ["example"], "image": [base64.b64encode(png.tobytes()).decode()]})


def predict_request(model: ServedModel, frame: pd.DataFrame, params: dict | None = None,
                    device: str = "auto", allow_paths: bool = True) -> pd.DataFrame:
    """A served request: one row per image, each given as ``image`` (base64 file bytes: PNG,
    JPEG, 16-bit PNG, DICOM) or, with ``allow_paths``, ``path`` (a file the server reads), with
    optional ``id``; ``params`` as in ``SERVE_PARAMS``. Rows that cannot be decoded get their
    ``error``; a malformed request is a RequestError."""
    params = serve_params(params)
    points = served_operating_points(model)
    if params["operating_point"]:
        try:
            check_point(points, params["operating_point"])
        except ValueError:  # its message repeats the client's value
            raise RequestError(f"unknown operating point; this model has {sorted(points.get('thresholds', {}))}") \
                from None
    if not allow_paths and "path" in frame.columns and frame["path"].notna().any():
        raise RequestError("this server takes images as base64 bytes in an 'image' column, not server file paths "
                           "(start it with --allow-paths to let clients name files it can read)")
    sources, ids = request_sources(frame)
    return predict_sources(model, sources, ids, [f"row {i}" for i in range(len(sources))],
                           views=tuple(params["views"]), batch_size=params["batch_size"], device=device,
                           guardrails=params["guardrails"], operating_point=params["operating_point"] or None)


def serve_params(params: dict | None) -> dict:
    """``params`` over ``SERVE_PARAMS``' defaults, type-checked; RequestError naming a bad one."""
    if params is not None and not isinstance(params, dict):
        raise RequestError("params must be an object of named values")
    params = {k: v for k, v in (params or {}).items() if v is not None}
    unknown = sorted(set(params) - set(SERVE_PARAMS))
    if unknown:
        raise RequestError(f"unknown param(s) {unknown}; known: {sorted(SERVE_PARAMS)}")
    out = SERVE_PARAMS | params
    views = [out["views"]] if isinstance(out["views"], str) else out["views"]
    if not isinstance(views, (list, tuple)) or not views or not all(isinstance(v, str) for v in views):
        raise RequestError("param 'views' must be a list of TTA view names")
    if len(views) > len(VIEWS.names()):
        raise RequestError(f"param 'views' lists {len(views)} views; there are {len(VIEWS.names())}")
    unknown_views = sorted(set(views) - set(VIEWS.names()))
    if unknown_views:
        raise RequestError(f"unknown TTA view(s) {unknown_views}; known: {VIEWS.names()}")
    if isinstance(out["batch_size"], bool) or not isinstance(out["batch_size"], (int, np.integer)) \
            or not 1 <= out["batch_size"] <= 1024:
        raise RequestError("param 'batch_size' must be an integer from 1 to 1024")
    if not isinstance(out["guardrails"], (bool, np.bool_)):
        raise RequestError("param 'guardrails' must be true or false")
    if not isinstance(out["operating_point"], str):
        raise RequestError("param 'operating_point' must be a string")
    return {"views": list(views), "batch_size": int(out["batch_size"]), "guardrails": bool(out["guardrails"]),
            "operating_point": out["operating_point"]}


def request_sources(frame: pd.DataFrame) -> tuple[list[ImageSource], list[str]]:
    """Per row, the decoded ``image`` bytes, else the ``path``; and its id (``id``, else the path,
    else the row number). RequestError for a request without either column, a row with neither,
    or an image that is not base64."""
    if frame.columns.duplicated().any():
        raise RequestError("the request names a column twice")
    if "image" not in frame.columns and "path" not in frame.columns:
        raise RequestError(f"a request needs an 'image' (base64 file bytes) or 'path' column; it has "
                           f"{len(frame.columns)} other column(s)")
    images = _column(frame, "image")
    paths = _column(frame, "path")
    given = _column(frame, "id")
    sources: list[ImageSource] = []
    ids: list[str] = []
    for i, (image, path, given_id) in enumerate(zip(images, paths, given)):
        if image:
            sources.append(b64_bytes(image, i))
        elif path:
            sources.append(str(path))
        else:
            raise RequestError(f"row {i} has neither an image nor a path")
        ids.append(_text(given_id) if not _missing(given_id) else str(path) if path and not image else str(i))
    return sources, ids


def _missing(value) -> bool:
    return value is None or value is pd.NA or value == "" or (isinstance(value, float) and np.isnan(value))


def _text(value) -> str:
    """An id as text; 5.0 (an integer id in a column pandas made float by a gap) as '5'."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _column(frame: pd.DataFrame, name: str) -> list:
    """The column's values with missing ones as '' (all '' when the column is absent)."""
    if name not in frame.columns:
        return [""] * len(frame)
    return ["" if _missing(value) else value for value in frame[name].tolist()]


def b64_bytes(value, row: int) -> bytes:
    """An ``image`` cell as file bytes: raw bytes as they are, else base64 text (a ``data:`` URI
    prefix allowed); RequestError naming the row, never its content."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        raise RequestError(f"row {row}: image must be a base64 string, not {type(value).__name__}")
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    text = "".join(text.split())  # line-wrapped base64 (as `base64` writes it) is still base64
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"row {row}: image is not valid base64") from None
