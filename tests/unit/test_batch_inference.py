"""Streamed batch prediction equals one-shot prediction, chunk after chunk into one CSV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from cxr.data.imageset import ImageSet, make_manifest
from cxr.infer.batch import predict_chunks, write_predictions
from cxr.infer.serving import predict_files
from cxr.models.checkpoint import Checkpoint, CheckpointMeta
from cxr.models.classifier import Classifier, ModelConfig


def test_chunks_match_one_shot_and_csv_has_every_row_once(tmp_path: Path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(11):
        paths.append(str(tmp_path / f"x{i}.png"))
        cv2.imwrite(paths[-1], rng.integers(0, 256, (40, 36), dtype=np.uint8))
    ids = [f"x{i}" for i in range(11)]
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet10t")
    checkpoint = Checkpoint.from_model(Classifier(cfg, 2).eval(), CheckpointMeta(
        model=cfg, image_size=32, label_names=["a", "b"], mean=0.5, std=0.25, preprocess={"clahe": True}))
    images = ImageSet(make_manifest(ids, paths), (), np.zeros((11, 0), np.float32), np.zeros((11, 0), bool))
    chunks = list(predict_chunks(checkpoint, images, chunk_size=4, progress=False))
    assert [len(c) for c in chunks] == [4, 4, 3]
    rows = write_predictions(iter(chunks), tmp_path / "out" / "p.csv")
    written = pd.read_csv(tmp_path / "out" / "p.csv")
    expected = predict_files(checkpoint, paths, ids)
    assert rows == 11 and list(written["id"]) == ids and list(written.columns) == ["id", "a", "b"]
    np.testing.assert_allclose(written[["a", "b"]].to_numpy(), expected[["a", "b"]].to_numpy(), atol=1e-5)
