"""Predict straight from image files with a checkpoint or an ensemble, preprocessing as each
model was trained."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from cxr.data.imageset import ImageSet, make_manifest
from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.infer.ensemble import EnsembleModel
from cxr.infer.tta import predict_imageset
from cxr.models.checkpoint import Checkpoint


def preprocess_files(checkpoint: Checkpoint, paths: Sequence[str], ids: Sequence[str] | None = None) -> ImageSet:
    """Decode and preprocess image files with the checkpoint's training settings."""
    ids = list(ids) if ids is not None else [str(p) for p in paths]
    manifest = make_manifest(ids, paths)
    imageset = ImageSet(manifest, (), np.zeros((len(ids), 0), np.float32), np.zeros((len(ids), 0), bool))
    cfg = PreprocessConfig(**{**checkpoint.meta.preprocess, "image_size": checkpoint.meta.image_size,
                              "skip_corrupt": False})
    return preprocess_imageset(imageset, cfg, progress=False)


ServedModel = Checkpoint | EnsembleModel


def predict_files(model: ServedModel, paths: Sequence[str], ids: Sequence[str] | None = None,
                  views: Sequence[str] = ("original",), batch_size: int = 64,
                  device: str = "auto") -> pd.DataFrame:
    """Decode, preprocess (the model's training settings) and predict image files; an ensemble
    does this per member (each with its own image size) and combines the probabilities."""
    if isinstance(model, EnsembleModel):
        frames = [predict_files(c, paths, ids, views, batch_size, device) for c in model.members.values()]
        labels = model.label_names
        combined = model.combine([f[labels].to_numpy(np.float64) for f in frames])
        return pd.DataFrame({"id": frames[0]["id"], **dict(zip(labels, combined.T))})
    return predict_imageset(model, preprocess_files(model, paths, ids), views, batch_size, device)
