"""The training pipeline through ZenML on a few dozen real Kermany images (isolated store)."""

from __future__ import annotations

import shutil
from pathlib import Path

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

from tests.pipeline.conftest import output, statuses

pytestmark = pytest.mark.slow

N_PER_CLASS, N_TEST, SIZE = 24, 10, 32
FEATURE_STEPS = {"split_dataset", "preprocess_images", "preprocess_test"}
TRAINING_STEPS = {"finetune", "tta_predict_val", "evaluate", "register_model", "tta_predict_test"}


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
    config = {"parameters": {
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
def runs(mini_kermany: Path, tmp_path_factory):
    """Three runs: fresh; the fine-tune lr changed; the same again (all cached)."""
    from zenml.client import Client

    from pipelines import runner as cli

    folder = tmp_path_factory.mktemp("runs")
    first = cli.train(str(write_config(folder, mini_kermany, 1e-3)), "first")
    second = cli.train(str(write_config(folder, mini_kermany, 3e-3)), "second")
    third = cli.train(str(write_config(folder, mini_kermany, 3e-3)), "third")
    client = Client()
    return folder, [client.get_pipeline_run(r.id) for r in (first, second, third)]


def test_first_run_executes_every_step(runs):
    _, (first, _, _) = runs
    assert str(first.status.value) == "completed"
    assert set(statuses(first).values()) == {"completed"}
    assert FEATURE_STEPS | TRAINING_STEPS | {"ingest", "ingest_test", "submission"} == set(first.steps)


def test_artifacts_hold_what_later_steps_need(runs):
    _, (first, _, _) = runs
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
    _, (first, _, _) = runs
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
    folder, (_, _, third) = runs
    sample = pd.read_csv(mini_kermany / "test" / "sample_submission.csv")
    written = pd.read_csv(folder / "submission.csv")
    assert list(written.columns) == ["id", "pneumonia"]
    assert list(written["id"]) == list(sample["id"])
    assert written["pneumonia"].between(0, 1).all() and written["pneumonia"].std() > 0
    artifact = output(third, "submission", "submission")
    assert np.allclose(artifact["pneumonia"], written["pneumonia"], atol=1e-6)


def test_changing_finetune_lr_reruns_finetune_and_what_follows_only(runs):
    _, (_, second, third) = runs
    status = statuses(second)
    assert {s: status[s] for s in FEATURE_STEPS} == dict.fromkeys(FEATURE_STEPS, "cached")
    assert {s: status[s] for s in TRAINING_STEPS} == dict.fromkeys(TRAINING_STEPS, "completed")
    status = statuses(third)
    assert {s: status[s] for s in FEATURE_STEPS | TRAINING_STEPS} == dict.fromkeys(FEATURE_STEPS | TRAINING_STEPS, "cached")


def test_registered_versions_load_through_the_core(runs, mini_kermany):
    import mlflow
    from mlflow import MlflowClient

    from cxr.infer.serving import predict_files
    from pipelines import runner as cli

    _, (first, second, _) = runs
    mlflow.set_tracking_uri(cli.tracking_uri())
    versions = {int(v.version): v for v in MlflowClient().search_model_versions("name='cxr-test'")}
    assert sorted(versions) == [1, 2], "the cached third run must not add a version"
    assert versions[1].tags["zenml_run_id"] == str(first.id)
    assert versions[2].tags["zenml_run_id"] == str(second.id)
    metrics = output(second, "evaluate", "val_metrics")
    assert float(versions[2].tags["val_mean_auc"]) == pytest.approx(metrics["mean_auc"], abs=1e-6)

    paths = sorted(str(p) for p in (mini_kermany / "test" / "images").iterdir())[:3]
    served = mlflow.pyfunc.load_model("models:/cxr-test/2").predict(pd.DataFrame({"path": paths}))
    direct = predict_files(output(second, "finetune", "checkpoint"), paths)
    assert np.allclose(served["pneumonia"], direct["pneumonia"], atol=1e-5)
