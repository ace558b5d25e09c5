"""The training pipeline through ZenML on a few dozen real Kermany images (isolated store):
what each step hands on, metrics, submission, caching (a knob change, an untouched re-run, an
image edited on disk), registered versions, and the CLI's ``info`` and ``predict``."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import (
    average_precision_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from cxr.errors import DataError
from tests.pipeline.conftest import FAST_INTERVALS, output, run_and_fetch, statuses, use_stack_tracking

pytestmark = pytest.mark.slow

N_PER_CLASS, N_TEST, SIZE = 24, 10, 32
FEATURE_STEPS = {"split_dataset", "preprocess_images", "preprocess_test", "audit_leakage"}
TRAINING_STEPS = {"finetune", "tta_predict_val", "evaluate", "generalisation_report", "calibrate", "fit_guardrails",
                  "register_model", "tta_predict_test"}


@pytest.fixture(scope="module")
def mini_kermany(real_data_dir: Path, tmp_path_factory) -> Path:
    """A copy of the first images of each class and of the test folder, with a sample CSV."""
    source, root = real_data_dir / "kermany-pneumonia-224", tmp_path_factory.mktemp("kermany")
    for name in ("NORMAL", "PNEUMONIA"):
        (root / "train" / name).mkdir(parents=True)
        for path in sorted((source / "train" / name).iterdir())[:N_PER_CLASS]:
            shutil.copy(path, root / "train" / name)
    (root / "test" / "images").mkdir(parents=True)
    tests = sorted((source / "test" / "images").iterdir())[:N_TEST]
    for path in tests:
        shutil.copy(path, root / "test" / "images")
    pd.DataFrame({"id": [p.stem for p in reversed(tests)], "pneumonia": 0.5}).to_csv(
        root / "test" / "sample_submission.csv", index=False)
    return root


def write_config(folder: Path, data: Path, lr: float) -> Path:
    config = {"parameters": {**FAST_INTERVALS,
        "data": {"source": "folders", "path": str(data / "train"), "negative_class": "NORMAL",
                 "patient_id_pattern": r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)"},
        "test_data": {"source": "images", "path": str(data / "test" / "images"), "label_names": ["pneumonia"]},
        "sample_submission": str(data / "test" / "sample_submission.csv"),
        "submission_path": str(folder / "submission.csv"),
        "split": {"val_fraction": 0.25, "seed": 0},
        "preprocess": {"image_size": SIZE},
        "model": {"backbone": "resnet10t", "head": "mlp", "head_drop_rate": 0.1},
        "train": {"epochs": 2, "batch_size": 16, "lr": lr},
        "registered_model_name": "cxr-test",
    }}
    path = folder / f"config-{lr}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def runs(mini_kermany: Path, tmp_path_factory) -> dict:
    """Four runs: ``first``; ``second`` (fine-tune lr changed); ``third`` (the same again, files
    untouched); ``edited`` (the same after one training image's pixels were inverted in place)."""
    folder = tmp_path_factory.mktemp("runs")
    configs = {lr: write_config(folder, mini_kermany, lr) for lr in (1e-3, 3e-3)}
    runs = {name: run_and_fetch("train", configs[lr], name) for name, lr in
            (("first", 1e-3), ("second", 3e-3), ("third", 3e-3))}
    image = edited_image(mini_kermany)
    cv2.imwrite(str(image), 255 - cv2.imread(str(image), cv2.IMREAD_GRAYSCALE))
    return {**runs, "edited": run_and_fetch("train", configs[3e-3], "edited-image"), "folder": folder}


def edited_image(data: Path) -> Path:
    return sorted((data / "train" / "NORMAL").iterdir())[0]


def ingest_hash(run) -> str:
    return run.steps["ingest"].outputs["images"][0].content_hash


def test_first_run_executes_every_step(runs):
    first = runs["first"]
    assert str(first.status.value) == "completed"
    assert set(statuses(first).values()) == {"completed"}
    uncached = {"ingest", "ingest_test", "check_test_inputs", "submission", "model_card"}  # they read the folders
    assert FEATURE_STEPS | TRAINING_STEPS | uncached == set(first.steps)


def test_artifacts_hold_what_later_steps_need(runs):
    first = runs["first"]
    decoded = output(first, "preprocess_images", "decoded_images")
    assert decoded.images.dtype == np.uint8 and decoded.images.shape == (2 * N_PER_CLASS, SIZE, SIZE)
    assert set(decoded.manifest["split"]) == {"train", "val"}
    train_patients = set(decoded.split("train").manifest["patient_id"])
    assert not train_patients & set(decoded.split("val").manifest["patient_id"])
    checkpoint = output(first, "finetune", "checkpoint")
    assert checkpoint.meta.label_names == ["pneumonia"] and checkpoint.meta.image_size == SIZE
    assert checkpoint.meta.model.head == "mlp" and checkpoint.meta.preprocess["image_size"] == SIZE
    history = output(first, "finetune", "history")
    assert list(history["epoch"]) == [1, 2] and np.isfinite(history["train_loss"]).all()
    assert output(first, "evaluate", "roc_curve").size[0] > 100


def test_val_metrics_are_scikit_learns_on_the_val_predictions(runs):
    first = runs["first"]
    val = output(first, "preprocess_images", "decoded_images").split("val")
    y = val.labels[:, 0].astype(int)
    p = output(first, "tta_predict_val", "predictions").set_index("id").loc[val.ids, "pneumonia"].to_numpy()
    metrics, report = output(first, "evaluate", "val_metrics"), output(first, "evaluate", "val_report").iloc[0]
    assert metrics["auc_pneumonia"] == metrics["mean_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert metrics["mean_average_precision"] == pytest.approx(average_precision_score(y, p), abs=1e-9)
    candidates = [t for t in np.unique(p) if 0.01 <= t <= 0.99]
    assert metrics["mean_f1"] == pytest.approx(max(f1_score(y, p >= t) for t in candidates), abs=1e-9)
    predicted = (p >= report["threshold"]).astype(int)
    assert metrics["mean_kappa"] == pytest.approx(cohen_kappa_score(y, predicted), abs=1e-9)
    tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    assert (report["tn"], report["fp"], report["fn"], report["tp"]) == (tn, fp, fn, tp)


def test_submission_follows_the_sample(runs, mini_kermany):
    sample = pd.read_csv(mini_kermany / "test" / "sample_submission.csv")
    written = pd.read_csv(runs["folder"] / "submission.csv")
    assert list(written.columns) == ["id", "pneumonia"]
    assert list(written["id"]) == list(sample["id"])
    assert written["pneumonia"].between(0, 1).all() and written["pneumonia"].std() > 0
    artifact = output(runs["edited"], "submission", "submission")
    assert np.allclose(artifact["pneumonia"], written["pneumonia"], atol=1e-6)


def test_changing_finetune_lr_reruns_finetune_and_what_follows_only(runs):
    status = statuses(runs["second"])
    assert {s: status[s] for s in FEATURE_STEPS} == dict.fromkeys(FEATURE_STEPS, "cached")
    assert {s: status[s] for s in TRAINING_STEPS} == dict.fromkeys(TRAINING_STEPS, "completed")


def test_an_untouched_rerun_keeps_the_hash_and_the_cache(runs):
    assert ingest_hash(runs["third"]) == ingest_hash(runs["second"])
    status, downstream = statuses(runs["third"]), FEATURE_STEPS | TRAINING_STEPS
    assert status["ingest"] == "completed"
    assert {s: status[s] for s in downstream} == dict.fromkeys(downstream, "cached")


def test_editing_one_image_on_disk_reruns_what_reads_it(runs, mini_kermany):
    assert ingest_hash(runs["edited"]) != ingest_hash(runs["third"])
    status = statuses(runs["edited"])
    reread = {"split_dataset", "preprocess_images", "audit_leakage"} | TRAINING_STEPS
    assert {s: status[s] for s in reread} == dict.fromkeys(reread, "completed")
    assert status["preprocess_test"] == "cached", "the test images did not change"
    before = output(runs["third"], "preprocess_images", "decoded_images")
    after = output(runs["edited"], "preprocess_images", "decoded_images")
    assert after.ids == before.ids
    edited = after.ids.index(edited_image(mini_kermany).stem)
    same = [i for i in range(len(after)) if i != edited]
    assert np.array_equal(after.images[same], before.images[same])
    assert np.abs(after.images[edited].astype(int) - before.images[edited]).mean() > 20


def test_registered_versions_load_through_the_core(runs, mini_kermany):
    import mlflow
    from mlflow import MlflowClient

    from cxr.infer.serving import predict_files

    second = runs["second"]
    use_stack_tracking()
    versions = {int(v.version): v for v in MlflowClient().search_model_versions("name='cxr-test'")}
    assert sorted(versions) == [1, 2, 3], "the cached third run must not add a version"
    tagged = [versions[v].tags["zenml_run_id"] for v in (1, 2, 3)]
    assert tagged == [str(runs[name].id) for name in ("first", "second", "edited")]
    metrics = output(second, "evaluate", "val_metrics")
    assert float(versions[2].tags["val_mean_auc"]) == pytest.approx(metrics["mean_auc"], abs=1e-6)

    paths = sorted(str(p) for p in (mini_kermany / "test" / "images").iterdir())[:3]
    served = mlflow.pyfunc.load_model("models:/cxr-test/2").predict(pd.DataFrame({"path": paths}))
    calibrated = output(second, "calibrate", "calibrated_checkpoint")
    direct = predict_files(calibrated, paths)
    assert np.allclose(served["pneumonia"], direct["pneumonia"], atol=1e-5)
    assert calibrated.meta.calibration["method"] == versions[2].tags["calibration"] == "platt"
    for point, by_label in calibrated.meta.operating_points["thresholds"].items():
        assert float(versions[2].tags[f"operating_point.{point}.pneumonia"]) == pytest.approx(by_label["pneumonia"],
                                                                                              abs=1e-6)
    at_point = mlflow.pyfunc.load_model("models:/cxr-test/2").predict(pd.DataFrame({"path": paths}),
                                                                      params={"operating_point": "sensitivity"})
    threshold = calibrated.meta.operating_points["thresholds"]["sensitivity"]["pneumonia"]
    assert at_point["pneumonia_positive"].tolist() == (direct["pneumonia"] >= threshold).tolist()


def test_model_card_in_a_real_browser(runs, tmp_path: Path):
    from mlflow import MlflowClient

    import run
    from cxr.lifecycle.model_card import SECTIONS
    from tests.browser import inspect_page, keep_on_failure

    card = tmp_path / "card.html"
    assert run.main(["card", "--name", "cxr-test", "--version", "2", "--out", str(card)]) == 0
    use_stack_tracking()
    client = MlflowClient()
    version = client.get_model_version("cxr-test", "2")
    logged = client.download_artifacts(version.run_id, "model_card.html", str(tmp_path / "logged"))
    assert Path(logged).read_text() == card.read_text(), "the CLI and the step draw the same card"
    metrics = client.get_run(version.run_id).data.metrics
    shot = tmp_path / "model_card_training_pipeline.png"
    shown = inspect_page(card, shot)
    try:
        assert shown["errors"] == [] and shown["remote"] == []
        assert shown["sections"] == list(SECTIONS)
        assert {i["id"] for i in shown["images"]} == {"reliability", "gallery"}
        assert all(i["complete"] and i["width"] > 100 and i["height"] > 100 for i in shown["images"]), shown["images"]
        assert len(shown["metrics"]) > 20 and "trust/val_mean_auc_low" in shown["metrics"]
        for key, text in shown["metrics"].items():
            assert text == f"{metrics[key]:.4f}", key
        assert shown["title"] == "Model card: cxr-test version 2"
    except AssertionError:
        keep_on_failure(shot, True)
        raise


def test_info_prints_the_stack_tracking_uri_and_latest_run(runs, capsys):
    import run
    from pipelines import runner

    assert run.main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3:] == ["stack: cxr_local", f"MLflow tracking URI: {runner.tracking_uri()}",
                          "latest run: edited-image (completed)"]


def test_predict_with_the_latest_checkpoint_artifact(runs, mini_kermany, tmp_path: Path, capsys):
    import run
    from cxr.infer.serving import predict_files

    names = sorted(p.name for p in (mini_kermany / "test" / "images").iterdir())[:4]
    (tmp_path / "scans").mkdir()
    for name in names:
        shutil.copy(mini_kermany / "test" / "images" / name, tmp_path / "scans")
    csv = tmp_path / "probs.csv"
    assert run.main(["predict", str(tmp_path / "scans"), "--artifact", "checkpoint", "--csv", str(csv)]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in names)
    written = pd.read_csv(csv).set_index("id").loc[names, "pneumonia"]
    assert run.main(["predict", str(tmp_path / "scans"), "--csv", str(tmp_path / "calibrated.csv")]) == 0
    calibrated = pd.read_csv(tmp_path / "calibrated.csv").set_index("id").loc[names, "pneumonia"]
    np.testing.assert_allclose(calibrated, predict_files(output(runs["edited"], "calibrate", "calibrated_checkpoint"),
                                                         [str(tmp_path / "scans" / n) for n in names],
                                                         names)["pneumonia"], atol=1e-6)
    expected = predict_files(output(runs["edited"], "finetune", "checkpoint"),
                             [str(tmp_path / "scans" / n) for n in names], names)
    np.testing.assert_allclose(written, expected["pneumonia"], atol=1e-6)


def drift_batch(folder: Path, images: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"scan{i:03d}.png"), image)
    return folder


def infer_with_drift_gate(folder: Path, batch: Path, name: str):
    """The inference pipeline on ``batch`` with the latest ``cxr-test`` version and ``drift.action: fail``;
    the run, the CSV path and the exception (None when the run completed)."""
    import mlflow
    from zenml.client import Client

    use_stack_tracking()
    version = max(int(v.version) for v in mlflow.MlflowClient().search_model_versions("name='cxr-test'"))
    out = folder / f"{name}.csv"
    config = folder / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"parameters": {
        "data": {"source": "images", "path": str(batch), "label_names": ["pneumonia"]},
        "registered_model_name": "cxr-test", "version": version, "output_path": str(out),
        "drift": {"action": "fail"}}}))
    try:
        run = run_and_fetch("infer", config, name)
    except Exception as error:  # the failed step's error, re-raised by the orchestrator
        run = Client().get_pipeline_run(name)
        return run, out, error
    return run, out, None


def test_the_drift_gate_passes_a_clean_batch_and_stops_drifted_ones_before_any_prediction(runs, real_data_dir,
                                                                                          tmp_path: Path):
    source = real_data_dir / "kermany-pneumonia-224" / "train"
    held_out = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for name in ("NORMAL", "PNEUMONIA")
                for p in sorted((source / name).iterdir())[N_PER_CLASS:N_PER_CLASS + 15]]
    nih = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((real_data_dir / "nih1000-64" / "images")
                                                                     .glob("*.png"))[:30]]
    batches = {"clean": held_out, "inverted": [255 - i for i in held_out], "nih1000": nih}
    outcomes = {name: infer_with_drift_gate(tmp_path, drift_batch(tmp_path / name, images), f"drift-{name}")
                for name, images in batches.items()}
    run, out, error = outcomes["clean"]
    assert error is None and out.is_file() and len(pd.read_csv(out)) == 30
    report = output(run, "check_drift", "drift_report")
    assert not report["drifted"].any(), report.to_string()
    assert output(run, "batch_predict", "inference_summary")["drifted"] == []
    for name in ("inverted", "nih1000"):
        run, out, error = outcomes[name]
        assert isinstance(error, DataError) and str(error).startswith("step check_drift: batch drifted: ")
        message = run.steps["check_drift"].exception_info.message
        assert message.startswith("batch drifted: ") and "no prediction was written" in message
        assert not out.exists(), f"{name}: predictions were written"
        steps = statuses(run)
        assert steps["check_drift"] == "failed" and steps.get("batch_predict") in (None, "skipped"), steps
