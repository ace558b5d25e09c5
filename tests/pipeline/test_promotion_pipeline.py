"""Promotion through ZenML with outcomes fixed by construction, rollback through the CLI, and
batch inference with a pinned version, TTA views and a sample submission.

The same generated images are labelled twice: truly, and with NORMAL and PNEUMONIA swapped.
A model trained on the swapped labels ranks val backwards, so the true model is certainly
better than it; the true model registered a second time is certainly not better than itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.helpers import free_port, write_class_tree
from tests.pipeline.conftest import (
    FAST_INTERVALS, folders_source, output, run_and_fetch, use_stack_tracking, write_yaml,
)

pytestmark = pytest.mark.slow

NAME, ROLLBACK_NAME = "cxr-promotion-test", "cxr-rollback-test"
TRAIN = {"epochs": 2, "batch_size": 8, "lr": 1e-2}


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    """``true`` (generated, opacity = PNEUMONIA) and ``swapped`` (the same files, classes swapped)."""
    root = tmp_path_factory.mktemp("promotion")
    true = write_class_tree(root / "true", n_per_class=24, size=32)
    for source, target in (("NORMAL", "PNEUMONIA"), ("PNEUMONIA", "NORMAL")):
        shutil.copytree(true / source, root / "swapped" / target)
    return {"true": true, "swapped": root / "swapped"}


def write_config(path: Path, data: Path, registered: str, extra: dict | None = None) -> Path:
    """A 32 px resnet10t training config with promotion, registering to ``registered``; no CLAHE,
    whose 4 px tiles would flatten the opacities."""
    return write_yaml(path, {"parameters": {**FAST_INTERVALS,
        "data": folders_source(data), "split": {"val_fraction": 0.25},
        "preprocess": {"image_size": 32, "clahe": False},
        "model": {"backbone": "resnet10t"}, "train": TRAIN, "tta_views": ["original"],
        "registered_model_name": registered, "promotion": {"n_bootstrap": 200}}, **(extra or {})})


@pytest.fixture(scope="module")
def promotion_runs(trees, tmp_path_factory) -> dict:
    """``swapped`` (first version), ``true`` (certainly better), ``again`` (the true model re-registered)."""
    folder = tmp_path_factory.mktemp("promotion-configs")
    zenml_model = {"model": {"name": NAME}}
    configs = {"swapped": write_config(folder / "swapped.yaml", trees["swapped"], NAME, zenml_model),
               "true": write_config(folder / "true.yaml", trees["true"], NAME, zenml_model),
               "again": write_config(folder / "again.yaml", trees["true"], NAME,
                                     {**zenml_model, "steps": {"register_model": {"enable_cache": False}}})}
    return {name: run_and_fetch("train", path, f"promotion-{name}") for name, path in configs.items()}


def promotion(run) -> dict:
    return output(run, "promote_model", "promotion")


def registry():
    """An MlflowClient on the stack's registry."""
    import mlflow

    use_stack_tracking()
    return mlflow.MlflowClient()


def served_auc(version: int, run) -> float:
    """ROC AUC of registered ``version`` on ``run``'s val files, predicted as served."""
    import mlflow

    val = output(run, "preprocess_images", "decoded_images").split("val")
    served = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}").predict(
        pd.DataFrame({"id": val.ids, "path": val.manifest["path"]}))
    return roc_auc_score(val.labels[:, 0], served["pneumonia"])


def test_the_first_version_is_champion_with_nothing_to_beat(promotion_runs):
    first = promotion(promotion_runs["swapped"])
    assert (first["alias"], first["reason"], first["champion_before"]) == ("champion", "no champion yet", None)
    tags = registry().get_model_version(NAME, "1").tags
    assert tags["promotion_promote"] == "True" and tags["promotion_reason"] == "no champion yet"


def test_a_certainly_better_version_takes_champion(promotion_runs):
    second = promotion(promotion_runs["true"])
    assert (second["alias"], second["champion_before"], second["promote"]) == ("champion", 1, True)
    assert second["ci_low"] > 0 and second["reason"].startswith("better")
    client = registry()
    assert client.get_model_version_by_alias(NAME, "champion").version == 2
    assert client.get_model_version_by_alias(NAME, "previous_champion").version == 1
    tags = client.get_model_version(NAME, "2").tags
    new_auc, old_auc = served_auc(2, promotion_runs["true"]), served_auc(1, promotion_runs["true"])
    assert float(tags["promotion_new_auc"]) == pytest.approx(new_auc, abs=1e-6)
    assert float(tags["promotion_champion_auc"]) == pytest.approx(old_auc, abs=1e-6)
    assert float(tags["promotion_delta"]) == pytest.approx(new_auc - old_auc, abs=1e-6)
    assert tags["promotion_promote"] == "True" and float(tags["promotion_ci_low"]) == second["ci_low"]


def test_the_same_model_registered_again_stays_challenger(promotion_runs):
    third = promotion(promotion_runs["again"])
    assert (third["alias"], third["champion_before"], third["promote"]) == ("challenger", 2, False)
    assert third["delta"] == third["ci_low"] == third["ci_high"] == 0.0
    assert third["reason"].startswith("not better")
    client = registry()
    assert client.get_model_version(NAME, "3").aliases == ["challenger"]
    assert client.get_model_version_by_alias(NAME, "champion").version == 2
    tags = client.get_model_version(NAME, "3").tags
    assert tags["promotion_promote"] == "False" and float(tags["promotion_delta"]) == 0.0


def test_zenml_model_version_stages_mirror_the_aliases(promotion_runs):
    from zenml.client import Client

    stages = {name: str(Client().get_pipeline_run(run.id).model_version.stage) for name, run in promotion_runs.items()}
    assert stages == {"swapped": "archived", "true": "production", "again": "staging"}


@pytest.fixture(scope="module")
def rollback_registry(trees, tmp_path_factory) -> str:
    """``ROLLBACK_NAME`` with version 1 (swapped) as previous champion and version 2 (true) as champion."""
    folder = tmp_path_factory.mktemp("rollback-configs")
    for name in ("swapped", "true"):
        run_and_fetch("train", write_config(folder / f"{name}.yaml", trees[name], ROLLBACK_NAME), f"rollback-{name}")
    return ROLLBACK_NAME


def test_rollback_restores_the_previous_champion_then_refuses(rollback_registry, capsys):
    import run

    client = registry()
    assert client.get_model_version_by_alias(rollback_registry, "champion").version == 2
    assert run.main(["rollback", "--name", rollback_registry]) == 0
    assert capsys.readouterr().out.strip() == (
        f"{rollback_registry}: champion is version 1 again; version 2 is now challenger")
    assert client.get_model_version(rollback_registry, "1").aliases == ["champion"]
    demoted = client.get_model_version(rollback_registry, "2")
    assert demoted.aliases == ["challenger"] and demoted.tags["rolled_back"] == "true"

    assert run.main(["rollback", "--name", rollback_registry]) == 1
    assert capsys.readouterr().err.strip() == (
        f"rollback refused: registered model {rollback_registry!r} has no 'previous_champion' alias: "
        "nothing to roll back to")
    assert client.get_model_version(rollback_registry, "1").aliases == ["champion"]


@pytest.fixture(scope="module")
def pinned_inference(promotion_runs, trees, tmp_path_factory) -> dict:
    """The inference pipeline on six images with version 1 pinned (version 2 is champion), two
    TTA views and a sample submission in its own row order."""
    folder = tmp_path_factory.mktemp("inference")
    scans = sorted((trees["true"] / "NORMAL").iterdir())[:3] + sorted((trees["true"] / "PNEUMONIA").iterdir())[:3]
    (folder / "scans").mkdir()
    for path in scans:
        shutil.copy(path, folder / "scans")
    sample = pd.DataFrame({"id": [p.stem for p in scans][::-1], "pneumonia": 0.5})
    sample.to_csv(folder / "sample.csv", index=False)
    config = write_yaml(folder / "infer.yaml", {"parameters": {
        "data": {"source": "images", "path": str(folder / "scans"), "label_names": ["pneumonia"]},
        "registered_model_name": NAME, "version": 1, "views": ["original", "hflip"], "chunk_size": 4,
        "sample_submission": str(folder / "sample.csv"), "output_path": str(folder / "predictions.csv")}})
    run = run_and_fetch("infer", config, "promotion-infer-v1")
    return {"run": run, "sample": sample, "written": pd.read_csv(folder / "predictions.csv", dtype={"id": str}),
            "paths": [str(folder / "scans" / p.name) for p in scans], "ids": [p.stem for p in scans]}


def predictions(uri: str, inference: dict, views: tuple[str, ...]) -> pd.DataFrame:
    """``uri``'s predictions of the inference images with ``views``, in the written row order."""
    from cxr.infer.serving import predict_files
    from steps.registry.lifecycle import served_model

    use_stack_tracking()
    frame = predict_files(served_model(uri), inference["paths"], inference["ids"], views=views)
    return frame.set_index("id").loc[inference["written"]["id"]].reset_index()


def test_batch_predict_follows_the_sample_submission(pinned_inference):
    written, sample = pinned_inference["written"], pinned_inference["sample"]
    assert list(written.columns) == list(sample.columns)
    assert list(written["id"]) == list(sample["id"])


def test_batch_predict_serves_the_pinned_version_with_its_views(pinned_inference):
    written = pinned_inference["written"]["pneumonia"].to_numpy()
    pinned = predictions(f"models:/{NAME}/1", pinned_inference, ("original", "hflip"))["pneumonia"].to_numpy()
    np.testing.assert_allclose(written, pinned, atol=1e-5)
    champion = predictions(f"models:/{NAME}@champion", pinned_inference, ("original", "hflip"))["pneumonia"]
    assert np.abs(written - champion.to_numpy()).max() > 0.05, "the champion's predictions, not version 1's"
    single = predictions(f"models:/{NAME}/1", pinned_inference, ("original",))["pneumonia"]
    assert np.abs(written - single.to_numpy()).max() > 1e-4, "single-view predictions: the views were ignored"
    summary = output(pinned_inference["run"], "batch_predict", "inference_summary")
    assert (summary["model_uri"], summary["rows"], summary["views"]) == (f"models:/{NAME}/1", 6, ["original", "hflip"])


def test_batch_inference_at_an_operating_point_equals_the_served_model(pinned_inference, tmp_path: Path):
    import mlflow

    from mlflow import MlflowClient

    folder = Path(pinned_inference["paths"][0]).parent
    config = write_yaml(tmp_path / "infer.yaml", {"parameters": {
        "data": {"source": "images", "path": str(folder), "label_names": ["pneumonia"]},
        "registered_model_name": NAME, "operating_point": "sensitivity", "output_path": str(tmp_path / "at.csv")}})
    run = run_and_fetch("infer", config, "promotion-infer-sensitivity")
    written = pd.read_csv(tmp_path / "at.csv", dtype={"id": str}).set_index("id")
    use_stack_tracking()
    champion = MlflowClient().get_model_version_by_alias(NAME, "champion")
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(
        pd.DataFrame({"path": pinned_inference["paths"], "id": pinned_inference["ids"]}),
        params={"operating_point": "sensitivity"}).set_index("id").loc[written.index]
    np.testing.assert_allclose(written["pneumonia"], served["pneumonia"], atol=1e-5)
    assert written["pneumonia_positive"].tolist() == served["pneumonia_positive"].tolist()
    threshold = float(champion.tags["operating_point.sensitivity.pneumonia"])
    assert written["pneumonia_positive"].tolist() == (written["pneumonia"] >= threshold - 1e-6).tolist()
    summary = output(run, "batch_predict", "inference_summary")
    assert summary["operating_point"] == "sensitivity"
    assert summary["positives"] == {"pneumonia_positive": int(written["pneumonia_positive"].sum())}


@pytest.fixture(scope="module")
def real_batch(promotion_runs, real_data_dir: Path, tmp_path_factory) -> dict:
    """Six real Kermany test X-rays through the inference pipeline, version 1 pinned, two views."""
    folder = tmp_path_factory.mktemp("real-batch")
    (folder / "scans").mkdir()
    scans = sorted((real_data_dir / "kermany-pneumonia-224" / "test" / "images").iterdir())[:60:10]
    for path in scans:
        shutil.copy(path, folder / "scans")
    config = write_yaml(folder / "infer.yaml", {"parameters": {
        "data": {"source": "images", "path": str(folder / "scans"), "label_names": ["pneumonia"]},
        "registered_model_name": NAME, "version": 1, "views": ["original", "hflip"],
        "output_path": str(folder / "predictions.csv")}})
    run_and_fetch("infer", config, "promotion-infer-real")
    return {"written": pd.read_csv(folder / "predictions.csv", dtype={"id": str}).set_index("id"),
            "scans": sorted((folder / "scans").iterdir())}


def test_the_served_version_scores_real_xray_bytes_as_the_batch_pipeline(real_batch, tmp_path: Path):
    import base64
    import os
    import subprocess
    import sys
    import time

    import requests

    from tests.conftest import REPO_ROOT

    scans = real_batch["scans"]
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "run.py", "serve", "--name", NAME, "--version", "1", "--port", str(port),
                               "--max-images", "8"], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env=os.environ | {"PYTHONUNBUFFERED": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while time.time() < deadline and server.poll() is None:
            try:
                if requests.get(url + "/ping", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        assert server.poll() is None, (tmp_path / "server.log").read_text()
        body = {"dataframe_split": {"columns": ["id", "image"],
                                    "data": [[p.stem, base64.b64encode(p.read_bytes()).decode()] for p in scans]},
                "params": {"views": ["original", "hflip"]}}
        response = requests.post(url + "/invocations", json=body, timeout=120)
        too_many = requests.post(url + "/invocations", json={"inputs": {"path": ["x"] * 9}}, timeout=30)
        info = requests.get(url + "/version", timeout=10).json()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert response.status_code == 200, response.text
    served = pd.DataFrame(response.json()["predictions"]).set_index("id")
    written = real_batch["written"]
    assert sorted(served.index) == sorted(written.index) and served["error"].eq("").all()
    np.testing.assert_allclose(served.loc[written.index, "pneumonia"], written["pneumonia"], atol=1e-5)
    assert too_many.status_code == 413 and info["version"] == 1


def test_the_onnx_export_of_a_version_scores_as_it_is_served(real_batch, tmp_path: Path):
    import json

    import mlflow

    from cxr.infer.onnx import run_graph, session
    from cxr.infer.serving import preprocess_files
    from cxr.metrics.calibration import apply_calibration
    from pipelines.runner import export
    from steps.registry.lifecycle import served_model

    folder = export(NAME, version=1, out=str(tmp_path / "onnx"), log=True)
    sidecar = json.loads((folder / "model.json").read_text())
    assert sidecar["labels"] == ["pneumonia"] and sidecar["calibration"]["method"] == "platt"
    checkpoint = served_model(f"models:/{NAME}/1")
    files = [str(p) for p in real_batch["scans"]]
    pixels = preprocess_files(checkpoint, files).images
    scores = apply_calibration(run_graph(session(folder / "model.onnx"), pixels)["probabilities"].astype(np.float64),
                               sidecar["calibration"], sidecar["labels"])
    written = real_batch["written"].loc[[Path(f).stem for f in files], "pneumonia"].to_numpy()
    single = mlflow.pyfunc.load_model(f"models:/{NAME}/1").predict(pd.DataFrame({"path": files}))["pneumonia"]
    np.testing.assert_allclose(scores[:, 0], single.to_numpy(), atol=1e-4)
    assert np.abs(written - single.to_numpy()).max() > 1e-4, "the batch used two views, the export one"
    client = registry()
    assert client.get_model_version(NAME, "1").tags["onnx"] == "onnx/"
    run_id = client.get_model_version(NAME, "1").run_id
    assert {a.path for a in client.list_artifacts(run_id, "onnx")} >= {"onnx/model.onnx", "onnx/model.json"}
