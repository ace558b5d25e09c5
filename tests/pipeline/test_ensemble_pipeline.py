"""The ensemble pipeline: one cached branch per member; adding members trains only those; a
member that cannot learn is dropped; the kept members are registered, served and promoted as
one model version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.helpers import write_class_tree
from tests.pipeline.conftest import folders_source, output, run_and_fetch, statuses, use_stack_tracking, write_yaml

pytestmark = pytest.mark.slow

NAME, AUC_FLOOR, VIEWS = "cxr-ensemble-test", 0.75, ["original", "hflip"]
LEARN = {"epochs": 1, "batch_size": 8, "lr": 3e-3, "samples_per_epoch": 128}
# the third member trains data-parallel (two Gloo processes), as a multi-GPU step would
MEMBERS = [{"name": "resnet", "model": {"backbone": "resnet10t"}, "train": LEARN},
           {"name": "mobilenet", "model": {"backbone": "mobilenetv3_small_100"}, "train": LEARN},
           {"name": "resnet14", "model": {"backbone": "resnet14t"},
            "train": {**LEARN, "processes": 2, "device": "cpu"}}]
# AdamW's decoupled decay with lr x weight_decay = 1 wipes every conv and linear weight at each
# step: this member predicts one constant, so its val AUC is exactly 0.5 whatever the seed
WEAK = {"name": "weak", "model": {"backbone": "resnet10t"},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-9, "weight_decay": 1e9}}
KEPT = [m["name"] for m in MEMBERS]


def write_config(folder: Path, data: Path, members: list[dict]) -> Path:
    """Members trained on 32 px images without CLAHE, whose 4 px tiles would flatten the opacities."""
    return write_yaml(folder / f"ensemble-{len(members)}.yaml", {"parameters": {
        "data": folders_source(data),
        "test_data": {"source": "images", "path": str(data / "PNEUMONIA"), "label_names": ["pneumonia"]},
        "submission_path": str(folder / "submission.csv"),
        "split": {"val_fraction": 0.25},
        "preprocess": {"image_size": 32, "clahe": False},
        "members": members,
        "ensemble": {"auc_floor": AUC_FLOOR, "max_gap": 1.0},
        "tta_views": VIEWS,
        "registered_model_name": NAME,
        "promotion": {"n_bootstrap": 200},
    }})


@pytest.fixture(scope="module")
def ensemble_runs(tmp_path_factory) -> dict:
    """``two`` members, then ``four``: the same two, a data-parallel one and one that cannot learn."""
    folder = tmp_path_factory.mktemp("ensemble")
    data = write_class_tree(folder / "data", n_per_class=16, size=32)
    runs = {name: run_and_fetch("ensemble", write_config(folder, data, members), f"ensemble-{name}")
            for name, members in (("two", MEMBERS[:2]), ("four", [*MEMBERS, WEAK]))}
    return {**runs, "folder": folder}


def member_predictions(run, name: str) -> np.ndarray:
    return output(run, f"tta_val_{name}", "predictions")["pneumonia"].to_numpy()


def report(run) -> pd.DataFrame:
    return output(run, "ensemble_predictions", "ensemble_report").set_index("member")


def test_adding_members_trains_only_the_new_branches(ensemble_runs):
    status = statuses(ensemble_runs["four"])
    assert status["finetune_resnet"] == status["finetune_mobilenet"] == "cached"
    assert status["finetune_resnet14"] == status["finetune_weak"] == status["ensemble_predictions"] == "completed"
    assert len(output(ensemble_runs["four"], "finetune_resnet14", "history")) == LEARN["epochs"]
    written = pd.read_csv(ensemble_runs["folder"] / "submission.csv")
    assert list(written.columns) == ["id", "pneumonia"] and len(written) == 16


def test_the_member_that_cannot_learn_is_dropped_with_the_reason(ensemble_runs):
    run = ensemble_runs["four"]
    table = report(run)
    assert list(table.index) == [*KEPT, "weak", "ensemble", "ensemble_cross_fit"]
    y = output(run, "preprocess_images", "decoded_images").split("val").labels[:, 0]
    aucs = {m: roc_auc_score(y, member_predictions(run, m)) for m in [*KEPT, "weak"]}
    assert table.loc[[*KEPT, "weak"], "val_auc"].to_dict() == pytest.approx(aucs, abs=1e-9)
    assert aucs["weak"] == 0.5 and min(aucs[m] for m in KEPT) >= AUC_FLOOR
    assert table.loc["weak", "dropped"] == f"val AUC {aucs['weak']:.4f} below the floor {AUC_FLOOR}"
    assert table.loc["weak", "weight"] == 0.0 and (table.loc[KEPT, "dropped"] == "").all()
    expected = np.array([aucs[m] for m in KEPT]) / sum(aucs[m] for m in KEPT)
    np.testing.assert_allclose(table.loc[KEPT, "weight"], expected, atol=1e-9)


def test_ensemble_predictions_are_the_kept_members_weighted_average(ensemble_runs):
    run = ensemble_runs["four"]
    weights = report(run)["weight"]
    expected = sum(weights[m] * member_predictions(run, m) for m in KEPT)
    got = output(run, "ensemble_predictions", "ensemble_val_predictions")["pneumonia"].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_the_registered_version_serves_only_the_kept_members(ensemble_runs):
    import mlflow

    from steps.registry.lifecycle import served_model

    run = ensemble_runs["four"]
    version = output(run, "register_ensemble", "model_version")
    use_stack_tracking()
    tags = mlflow.MlflowClient().get_model_version(NAME, str(version)).tags
    assert tags["ensemble_members"] == ",".join(KEPT)
    assert list(served_model(f"models:/{NAME}/{version}").members) == KEPT
    val = output(run, "preprocess_images", "decoded_images").split("val")
    served = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}").predict(
        pd.DataFrame({"id": val.ids, "path": val.manifest["path"]}), params={"views": VIEWS})
    expected = output(run, "ensemble_predictions", "ensemble_val_predictions")
    np.testing.assert_allclose(served["pneumonia"], expected["pneumonia"], atol=1e-5)


def test_ensembles_enter_the_promotion_contest(ensemble_runs):
    import mlflow

    first, second = (output(ensemble_runs[n], "promote_model", "promotion") for n in ("two", "four"))
    assert (first["alias"], first["reason"]) == ("champion", "no champion yet")
    assert second["champion_before"] == output(ensemble_runs["two"], "register_ensemble", "model_version")
    use_stack_tracking()
    version = output(ensemble_runs["four"], "register_ensemble", "model_version")
    assert mlflow.MlflowClient().get_model_version(NAME, str(version)).aliases == [second["alias"]]
