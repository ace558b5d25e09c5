"""TTA views, batched prediction, submissions and serving from files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr.data.imageset import ImageSet, make_manifest
from cxr.errors import DataError
from cxr.infer.predict import predict_proba
from cxr.infer.serving import predict_files
from cxr.infer.submission import make_submission, write_submission
from cxr.infer.tta import REFERENCE_VIEWS, TTA_VIEWS, predict_imageset, tta_views
from cxr.models.checkpoint import Checkpoint, CheckpointMeta
from cxr.models.classifier import Classifier, ModelConfig


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet10t")
    meta = CheckpointMeta(model=cfg, image_size=32, label_names=["pneumonia"], mean=0.5, std=0.25,
                          preprocess={"image_size": 32, "clahe": True})
    return Checkpoint.from_model(Classifier(cfg, 1).eval(), meta)


def test_reference_views():
    assert REFERENCE_VIEWS == ("original", "hflip", "rotate+5", "rotate-5", "zoom")
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(TTA_VIEWS["hflip"](x), torch.flip(x, dims=(-1,)))
    for name in REFERENCE_VIEWS:
        assert TTA_VIEWS[name](x).shape == x.shape
    assert not torch.allclose(TTA_VIEWS["rotate+5"](x), TTA_VIEWS["rotate-5"](x))
    with pytest.raises(ValueError, match="unknown TTA views"):
        tta_views(["vflip"])


def test_tta_is_the_mean_of_single_view_predictions(checkpoint: Checkpoint):
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32), dtype=np.uint8)
    model = checkpoint.build_model()
    per_view = [predict_proba(model, images, 0.5, 0.25, batch_size=2, views=tta_views([v]))
                for v in REFERENCE_VIEWS]
    stacked = predict_proba(model, images, 0.5, 0.25, batch_size=2, views=tta_views(REFERENCE_VIEWS))
    np.testing.assert_allclose(stacked, np.mean(per_view, axis=0), atol=1e-5)


def test_predict_imageset_checks_image_size(checkpoint: Checkpoint):
    ids = ["a", "b"]
    imageset = ImageSet(make_manifest(ids, ids), (), np.zeros((2, 0), np.float32), np.zeros((2, 0), bool),
                        images=np.zeros((2, 48, 48), np.uint8))
    with pytest.raises(ValueError, match="trained at 32x32"):
        predict_imageset(checkpoint, imageset)
    frame = predict_imageset(checkpoint, imageset.with_images(np.zeros((2, 32, 32), np.uint8)))
    assert list(frame.columns) == ["id", "pneumonia"] and frame["id"].tolist() == ids


def test_submission_follows_sample_order_and_columns(tmp_path: Path):
    predictions = pd.DataFrame({"id": ["t1", "t0"], "Pneumonia": [0.9, 0.1]})
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"id": ["t0", "t1"], "pneumonia": [0.5, 0.5]}).to_csv(sample, index=False)
    out = make_submission(predictions, sample)
    assert list(out.columns) == ["id", "pneumonia"] and out.values.tolist() == [["t0", 0.1], ["t1", 0.9]]
    path = write_submission(out, tmp_path / "sub" / "submission.csv")
    assert pd.read_csv(path).equals(pd.read_csv(path)) and path.is_file()


def test_submission_errors_name_columns_and_ids(tmp_path: Path):
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"id": ["t0", "t9"], "pneumonia": 0.5}).to_csv(sample, index=False)
    with pytest.raises(DataError, match="'t9'"):
        make_submission(pd.DataFrame({"id": ["t0"], "pneumonia": [0.1]}), sample)
    with pytest.raises(DataError, match=r"\['pneumonia'\]"):
        make_submission(pd.DataFrame({"id": ["t0", "t9"], "effusion": [0.1, 0.2]}), sample)


def test_predict_files_preprocesses_like_training(checkpoint: Checkpoint, class_tree: Path):
    paths = sorted(str(p) for p in (class_tree / "NORMAL").iterdir())[:3]
    frame = predict_files(checkpoint, paths, ids=["a", "b", "c"])
    assert frame["id"].tolist() == ["a", "b", "c"] and frame["pneumonia"].between(0, 1).all()


def test_predicting_on_a_named_device_leaves_the_model_trainable():
    model = Classifier(ModelConfig(backbone="resnet10t"), 1)
    predict_proba(model, np.zeros((2, 32, 32), np.uint8), 0.5, 0.2, device=torch.device("cpu:0"))
    assert not any(t.is_inference() for t in [*model.parameters(), *model.buffers()])
    model.train()(torch.zeros(2, 1, 32, 32)).sum().backward()
