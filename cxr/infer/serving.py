"""Predict straight from image files with a checkpoint, preprocessing as in training."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from cxr.data.imageset import ImageSet, make_manifest
from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
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


def predict_files(checkpoint: Checkpoint, paths: Sequence[str], ids: Sequence[str] | None = None,
                  views: Sequence[str] = ("original",), batch_size: int = 64,
                  device: str = "auto") -> pd.DataFrame:
    """Decode, preprocess (the checkpoint's training settings) and predict image files."""
    return predict_imageset(checkpoint, preprocess_files(checkpoint, paths, ids), views, batch_size, device)
