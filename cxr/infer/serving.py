"""Predict straight from image files with a checkpoint or an ensemble, preprocessing as each
model was trained, with the input guardrails' ``flag`` and ``flag_reason`` beside the scores and,
at a named operating point, ``<label>_positive``."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from cxr.data.imageset import ImageSet, make_manifest
from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.infer.ensemble import EnsembleModel
from cxr.infer.guardrails import flagged_predictions, guard, guardrail_config
from cxr.infer.tta import SINGLE_VIEW, predict_imageset
from cxr.metrics.operating_points import check_point, positive_columns
from cxr.models.checkpoint import Checkpoint


def serving_preprocess(checkpoint: Checkpoint) -> PreprocessConfig:
    """The checkpoint's training preprocessing; a corrupt file is an error, never skipped."""
    return PreprocessConfig(**{**checkpoint.meta.preprocess, "image_size": checkpoint.meta.image_size,
                               "skip_corrupt": False})


def preprocess_files(checkpoint: Checkpoint, paths: Sequence[str], ids: Sequence[str] | None = None) -> ImageSet:
    """Decode and preprocess image files with the checkpoint's training settings."""
    ids = list(ids) if ids is not None else [str(p) for p in paths]
    manifest = make_manifest(ids, paths)
    imageset = ImageSet(manifest, (), np.zeros((len(ids), 0), np.float32), np.zeros((len(ids), 0), bool))
    return preprocess_imageset(imageset, serving_preprocess(checkpoint), progress=False)


ServedModel = Checkpoint | EnsembleModel


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
    ``cxr.infer.guardrails``), and with ``operating_point`` one ``<label>_positive`` per label."""
    points = served_operating_points(model)
    if operating_point:
        check_point(points, operating_point)  # before any decoding
    if isinstance(model, EnsembleModel):
        predictions = predict_ensemble_files(model, paths, ids, views, batch_size, device, guardrails)
    else:
        images = preprocess_files(model, paths, ids)
        predictions = predict_imageset(model, images, views, batch_size, device)
        if guardrails:
            predictions = flagged_predictions(predictions, guard(model, images, device=device), served_labels(model),
                                              guardrail_config(model).reject)
    if not operating_point:
        return predictions
    return positive_columns(predictions, points, operating_point, served_labels(model))


def predict_ensemble_files(model: EnsembleModel, paths: Sequence[str], ids: Sequence[str] | None,
                           views: Sequence[str], batch_size: int, device: str, guardrails: bool = True) -> pd.DataFrame:
    """Each member's predictions combined by the ensemble's weights. The files are decoded once
    per distinct preprocessing, so members trained alike share one decode. An image is flagged
    when any member's guardrails flag it, and rejected when that member rejects."""
    decoded: dict[str, ImageSet] = {}
    frames, flags, reject = [], [], False
    for checkpoint in model.members.values():
        key = serving_preprocess(checkpoint).model_dump_json()
        if key not in decoded:
            decoded[key] = preprocess_files(checkpoint, paths, ids)
        frames.append(predict_imageset(checkpoint, decoded[key], views, batch_size, device))
        if guardrails:
            flags.append(guard(checkpoint, decoded[key], device=device))
            reject |= guardrail_config(checkpoint).reject
    labels = model.label_names
    combined = model.combine([f[labels].to_numpy(np.float64) for f in frames])
    predictions = pd.DataFrame({"id": frames[0]["id"], **dict(zip(labels, combined.T))})
    if not guardrails:
        return predictions
    reasons = [";".join(sorted({r for f in row for r in f.split(";") if r})) for row in
               zip(*(f["flag_reason"] for f in flags))]
    union = pd.DataFrame({"id": predictions["id"], "flag": [bool(r) for r in reasons], "flag_reason": reasons})
    return flagged_predictions(predictions, union, labels, reject)
