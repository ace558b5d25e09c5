"""Streamed batch prediction equals one-shot prediction, chunk after chunk into one CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr.infer.batch import predict_chunks, write_predictions
from cxr.infer.ensemble import EnsembleModel, load_ensemble_model, save_ensemble_model
from cxr.infer.serving import predict_files
from tests.helpers import random_checkpoint, write_images


def files(folder: Path, n: int) -> tuple[list[str], list[str]]:
    """Paths and ids of ``n`` generated 40 px images (the checkpoints here serve 32 or 48 px)."""
    images = write_images(folder, n, size=40)
    return images.manifest["path"].tolist(), images.ids


def test_chunks_match_one_shot_and_csv_has_every_row_once(tmp_path: Path):
    images = write_images(tmp_path, 11, size=40)
    paths, ids = images.manifest["path"].tolist(), images.ids
    checkpoint = random_checkpoint(0)
    chunks = list(predict_chunks(checkpoint, images, chunk_size=4, progress=False))
    assert [len(c) for c in chunks] == [4, 4, 3]
    rows = write_predictions(iter(chunks), tmp_path / "out" / "p.csv")
    written = pd.read_csv(tmp_path / "out" / "p.csv")
    expected = predict_files(checkpoint, paths, ids)
    assert rows == 11 and list(written["id"]) == ids and list(written.columns) == ["id", "a", "b", "flag", "flag_reason"]
    np.testing.assert_allclose(written[["a", "b"]].to_numpy(), expected[["a", "b"]].to_numpy(), atol=1e-5)


def test_ensemble_model_serves_the_weighted_members_and_round_trips(tmp_path: Path):
    paths, ids = files(tmp_path, 6)
    members = {"small": random_checkpoint(0, image_size=32), "large": random_checkpoint(1, image_size=48)}
    weights = np.array([[0.7, 0.2], [0.3, 0.8]])
    model = EnsembleModel(members, weights, "stack")
    each = [predict_files(c, paths, ids, views=("original", "hflip"))[["a", "b"]].to_numpy() for c in members.values()]
    got = predict_files(model, paths, ids, views=("original", "hflip"))
    np.testing.assert_allclose(got[["a", "b"]].to_numpy(), each[0] * weights[0] + each[1] * weights[1], atol=1e-6)
    loaded = load_ensemble_model(save_ensemble_model(model, tmp_path / "ensemble"))
    assert list(loaded.members) == ["small", "large"] and loaded.weighting == "stack"
    pd.testing.assert_frame_equal(predict_files(loaded, paths, ids, views=("original", "hflip")), got)


def test_ensemble_model_refuses_rank_averages_and_mixed_labels():
    with pytest.raises(ValueError, match="rank-averaged"):
        EnsembleModel({"a": random_checkpoint(0)}, np.ones((1, 2)), "rank")
    with pytest.raises(ValueError, match="disagree on their labels"):
        EnsembleModel({"a": random_checkpoint(0), "b": random_checkpoint(1, labels=("a", "c"))}, np.ones((2, 2)))


def test_ensemble_members_trained_alike_share_one_decode(tmp_path: Path, monkeypatch):
    from cxr.infer import serving

    paths, ids = files(tmp_path, 3)
    members = {"a": random_checkpoint(0), "b": random_checkpoint(1), "c": random_checkpoint(2, image_size=48)}
    decodes = []
    real = serving.preprocess_sources
    monkeypatch.setattr(serving, "preprocess_sources", lambda *a: decodes.append(a[-1].image_size) or real(*a))
    predict_files(EnsembleModel(members, np.full((3, 2), 1 / 3)), paths, ids)
    assert sorted(decodes) == [32, 48]
