"""ONNX export: onnxruntime on the preprocessed arrays matches torch to 1e-4 for every head, with
a dynamic batch and a fixed one; the graph normalises itself and the sidecar says how to
preprocess; served through onnxruntime, a checkpoint (guardrails included) and an ensemble
answer as the torch path does."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pandas as pd
import pytest

from cxr.cft.head import penultimate_features
from cxr.infer.ensemble import EnsembleModel
from cxr.infer.guardrails import fit_guardrails
from cxr.infer.onnx import export_checkpoint, export_model, onnx_backed, run_graph, session
from cxr.infer.predict import predict_proba
from cxr.infer.serving import predict_request
from tests.helpers import random_checkpoint, synthetic_xray, write_images

SIZE = 32


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([synthetic_xray(rng, SIZE, positive=i % 2 == 1) for i in range(9)])


@pytest.mark.parametrize("head", ["linear", "mlp", "attention"])
def test_onnxruntime_matches_torch_with_a_dynamic_batch(tmp_path: Path, images: np.ndarray, head: str):
    checkpoint = random_checkpoint(0, SIZE, head=head)
    graph = session(export_checkpoint(checkpoint, tmp_path))
    expected = predict_proba(checkpoint.build_model(), images, checkpoint.meta.mean, checkpoint.meta.std)
    features = penultimate_features(checkpoint, images)
    for n in (1, 4, 9):
        out = run_graph(graph, images[:n])
        np.testing.assert_allclose(out["probabilities"], expected[:n], atol=1e-4)
        np.testing.assert_allclose(out["features"], features[:n], atol=1e-4)
        np.testing.assert_allclose(1 / (1 + np.exp(-out["logits"])), out["probabilities"], atol=1e-6)


def test_a_fixed_batch_graph_takes_that_batch_only(tmp_path: Path, images: np.ndarray):
    checkpoint = random_checkpoint(1, SIZE)
    path = export_checkpoint(checkpoint, tmp_path, dynamic_batch=False, batch=4)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 1, SIZE, SIZE]
    graph = session(path)
    expected = predict_proba(checkpoint.build_model(), images[:4], checkpoint.meta.mean, checkpoint.meta.std)
    np.testing.assert_allclose(run_graph(graph, images[:4])["probabilities"], expected, atol=1e-4)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run_graph(graph, images[:3])


def test_the_graph_normalises_and_the_sidecar_describes_the_preprocessing(tmp_path: Path, images: np.ndarray):
    checkpoint = random_checkpoint(2, SIZE, resize_policy="crop", clahe_clip_limit=3.0)
    path = export_checkpoint(checkpoint, tmp_path)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, SIZE, SIZE]
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["labels"] == ["a", "b"] and meta["image_size"] == SIZE
    assert meta["preprocess"]["resize_policy"] == "crop" and meta["preprocess"]["clahe_clip_limit"] == 3.0
    assert meta["input"] == {"name": "pixels", "shape": ["batch", 1, SIZE, SIZE], "dtype": "float32",
                             "range": [0, 255], "meaning": "gray levels after preprocess, before normalisation"}
    # gray levels in: feeding the torch model's normalised input instead gives other scores
    normalised = (images[:, None].astype(np.float32) / 255 - checkpoint.meta.mean) / checkpoint.meta.std
    graph = session(path)
    assert np.abs(run_graph(graph, normalised)["probabilities"] - run_graph(graph, images)["probabilities"]).max() > 1e-3


def test_served_through_onnxruntime_a_guarded_checkpoint_answers_as_torch(tmp_path: Path):
    paths = write_images(tmp_path / "train", 12, SIZE, seed=0).manifest["path"].tolist()
    arrays = np.stack([cv2.imread(p, cv2.IMREAD_GRAYSCALE) for p in paths])
    checkpoint = fit_guardrails(random_checkpoint(3, SIZE), arrays[:10], arrays[10:])
    export_model(checkpoint, tmp_path / "onnx")
    request = pd.DataFrame({"path": paths + [str(tmp_path / "missing.png")]})
    params = {"views": ["original", "hflip", "rotate+5"]}
    torch_out = predict_request(checkpoint, request, params)
    onnx_out = predict_request(onnx_backed(checkpoint, tmp_path / "onnx"), request, params)
    np.testing.assert_allclose(onnx_out[["a", "b"]].to_numpy(), torch_out[["a", "b"]].to_numpy(), atol=1e-4)
    pd.testing.assert_frame_equal(onnx_out[["id", "flag", "flag_reason", "error"]],
                                  torch_out[["id", "flag", "flag_reason", "error"]])


def test_an_ensemble_exports_one_graph_per_member_with_its_weights(tmp_path: Path, images: np.ndarray):
    train = write_images(tmp_path / "train", 4, SIZE, seed=1)
    model = EnsembleModel({"x": random_checkpoint(4, SIZE), "y": random_checkpoint(5, SIZE)}, np.array([[0.7, 0.2],
                                                                                                       [0.3, 0.8]]))
    folder = export_model(model, tmp_path / "onnx")
    assert sorted(p.name for p in (folder / "members").iterdir()) == ["x", "y"]
    assert json.loads((folder / "ensemble.json").read_text())["weights"] == [[0.7, 0.2], [0.3, 0.8]]
    request = pd.DataFrame({"path": train.manifest["path"].tolist()})
    np.testing.assert_allclose(predict_request(onnx_backed(model, folder), request)[["a", "b"]].to_numpy(),
                               predict_request(model, request)[["a", "b"]].to_numpy(), atol=1e-4)
