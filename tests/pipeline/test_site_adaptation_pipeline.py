"""Site adaptation and robustness through ZenML on generated images: EMA and acquisition
augmentations in finetune, self-training and AdaBN on the unlabelled test folder, the robustness
step, and the adapted checkpoint registered, served and scored as in batch."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import write_class_tree
from tests.pipeline.conftest import (
    FAST_INTERVALS, folders_source, output, run_and_fetch, statuses, use_stack_tracking, write_yaml,
)

pytestmark = pytest.mark.slow

NAME = "cxr-adaptation-pipeline-test"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adapt")


@pytest.fixture(scope="module")
def run(root: Path):
    train = write_class_tree(root / "train", n_per_class=24, size=32)
    write_class_tree(root / "test_raw", n_per_class=6, size=32, seed=9)
    (root / "test").mkdir()
    for k, path in enumerate(sorted((root / "test_raw").rglob("*.png"))):
        shutil.copy(path, root / "test" / f"t{k}.png")
    config = write_yaml(root / "adapt.yaml", {"parameters": {**FAST_INTERVALS,
        "data": folders_source(train),
        "test_data": {"source": "images", "path": str(root / "test"), "label_names": ["pneumonia"]},
        "submission_path": str(root / "submission.csv"),
        "split": {"val_fraction": 0.25},
        "preprocess": {"image_size": 32, "clahe": False},
        "model": {"backbone": "resnet10t"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2, "averaging": "ema",
                  "augment": {"gamma": 0.2, "blur_prob": 0.2, "noise_std": 0.02, "jpeg_prob": 0.2, "resample_prob": 0.2}},
        "tta_views": ["original"], "registered_model_name": NAME,
        "adapt": {"target": "test", "self_training": {"rounds": 1, "epochs": 1, "threshold": 0.55}},
        "robustness": {"corruptions": ["invert", "gaussian_noise"], "severities": [1, 5], "max_images": None}}})
    return run_and_fetch("train", config, "site-adaptation")


def test_the_adapted_checkpoint_is_the_one_evaluated_and_submitted(run, root: Path):
    from cxr.adapt.target import unlabelled
    from cxr.infer.tta import predict_imageset

    steps = statuses(run)
    assert steps["adapt_to_target"] == "completed" and steps["robustness"] == "completed"
    tuned, adapted = output(run, "finetune", "checkpoint"), output(run, "adapt_to_target", "adapted_checkpoint")
    test = output(run, "preprocess_test", "decoded_images")
    record = adapted.meta.adaptation
    assert record["target"] == "test" and record["target_hash"] == unlabelled(test).content_hash()
    assert record["methods"] == ["self_training", "adabn"] and record["target_images"] == len(test) == 12
    assert any(not torch.equal(t, tuned.state_dict[k]) for k, t in adapted.state_dict.items() if k.endswith("weight"))
    calibrated = output(run, "calibrate", "calibrated_checkpoint")
    assert calibrated.meta.adaptation == record and calibrated.state_dict.keys() == adapted.state_dict.keys()
    expected = predict_imageset(calibrated, test, ["original"]).set_index("id")["pneumonia"]
    predictions = output(run, "tta_predict_test", "predictions").set_index("id")["pneumonia"]
    np.testing.assert_allclose(predictions.loc[expected.index], expected, atol=1e-6)
    submitted = pd.read_csv(root / "submission.csv", dtype={"id": str}).set_index("id")
    np.testing.assert_allclose(submitted.loc[expected.index, "pneumonia"], expected, atol=1e-6)


def test_self_training_logged_its_threshold_and_target_share(run):
    import mlflow

    log = output(run, "adapt_to_target", "self_training_log")
    assert log["round"].tolist() == [1] and log["threshold"].iloc[0] == 0.55
    assert 0 <= log["target_share_used"].iloc[0] <= 1
    use_stack_tracking()
    logged = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.mlflow.runName = '{run.name}'")
    assert logged["metrics.adapt/target_share_used"].iloc[0] == pytest.approx(log["target_share_used"].iloc[0])
    assert logged["tags.adapted_to_hash"].iloc[0] == output(run, "adapt_to_target", "adapted_checkpoint").meta.adaptation["target_hash"]


def test_robustness_table_and_mean_reach_mlflow(run):
    import mlflow

    table = output(run, "robustness", "robustness_table")
    assert table[["corruption", "severity"]].values.tolist() == [["none", 0], ["invert", 1], ["invert", 5],
                                                                 ["gaussian_noise", 1], ["gaussian_noise", 5]]
    use_stack_tracking()
    logged = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.mlflow.runName = '{run.name}'")
    assert logged["metrics.robustness/mean_corruption_auc"].iloc[0] == pytest.approx(table["auc"].iloc[1:].mean())
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(logged["run_id"].iloc[0], "plots")}
    assert "plots/robustness.png" in artifacts


def test_the_registered_adapted_model_serves_what_the_batch_pipeline_predicted(run):
    import mlflow

    use_stack_tracking()
    tags = mlflow.MlflowClient().get_model_version(NAME, "1").tags
    adapted = output(run, "adapt_to_target", "adapted_checkpoint")
    assert tags["adapted_to"] == "test" and tags["adapted_to_hash"] == adapted.meta.adaptation["target_hash"]
    assert tags["adaptation_methods"] == "self_training,adabn"
    test = output(run, "preprocess_test", "decoded_images")
    served = mlflow.pyfunc.load_model(f"models:/{NAME}/1").predict(pd.DataFrame({"path": test.manifest["path"]}))
    batch = output(run, "tta_predict_test", "predictions")
    np.testing.assert_allclose(served["pneumonia"].to_numpy(), batch["pneumonia"].to_numpy(), atol=1e-5)
