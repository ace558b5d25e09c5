"""The ensemble pipeline: one cached branch per member; adding a member trains only that one;
the ensemble is registered, served and promoted as one model version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import write_class_tree

pytestmark = pytest.mark.slow

# the added member trains data-parallel (two Gloo processes), as a multi-GPU step would
MEMBERS = [{"name": "resnet", "model": {"backbone": "resnet10t"}, "train": {"epochs": 1, "batch_size": 8}},
           {"name": "mobilenet", "model": {"backbone": "mobilenetv3_small_050"}, "train": {"epochs": 1, "batch_size": 8}},
           {"name": "efficientnet", "model": {"backbone": "efficientnet_b0"},
            "train": {"epochs": 1, "batch_size": 8, "processes": 2, "device": "cpu"}}]


def write_config(folder: Path, data: Path, members: list[dict]) -> Path:
    path = folder / f"ensemble-{len(members)}.yaml"
    path.write_text(yaml.safe_dump({"parameters": {
        "data": {"source": "folders", "path": str(data), "negative_class": "NORMAL",
                 "patient_id_pattern": r"^(patient\w\d+)"},
        "test_data": {"source": "images", "path": str(data / "PNEUMONIA"), "label_names": ["pneumonia"]},
        "submission_path": str(folder / "submission.csv"),
        "split": {"val_fraction": 0.25},
        "preprocess": {"image_size": 32},
        "members": members,
        "ensemble": {"auc_floor": 0.0, "max_gap": 1.0},
        "tta_views": ["original", "hflip"],
        "registered_model_name": "cxr-ensemble-test",
        "promotion": {"n_bootstrap": 200},
    }}))
    return path


def test_members_branch_cache_ensemble_and_promotion(tmp_path: Path):
    import mlflow
    from zenml.client import Client

    from pipelines import runner as cli

    data = write_class_tree(tmp_path / "data", n_per_class=16, size=32)
    first = cli.run_pipeline("ensemble", str(write_config(tmp_path, data, MEMBERS[:2])), "ensemble-2")
    second = cli.run_pipeline("ensemble", str(write_config(tmp_path, data, MEMBERS)), "ensemble-3")
    first, second = (Client().get_pipeline_run(r.id) for r in (first, second))
    status = {name: str(step.status.value) for name, step in second.steps.items()}
    assert status["finetune_resnet"] == status["finetune_mobilenet"] == "cached"
    assert status["finetune_efficientnet"] == "completed" and status["ensemble_predictions"] == "completed"
    assert len(second.steps["finetune_efficientnet"].outputs["history"][0].load()) == 1
    report = second.steps["ensemble_predictions"].outputs["ensemble_report"][0].load()
    assert list(report["member"]) == ["resnet", "mobilenet", "efficientnet", "ensemble", "ensemble_cross_fit"]
    assert np.isclose(report.loc[~report["member"].str.startswith("ensemble"), "weight"].sum(), 1.0)
    assert 0.0 <= report.set_index("member").loc["ensemble_cross_fit", "val_auc"] <= 1.0
    written = pd.read_csv(tmp_path / "submission.csv")
    assert list(written.columns) == ["id", "pneumonia"] and len(written) == 16
    val = second.steps["ensemble_predictions"].outputs["ensemble_val_predictions"][0].load()
    members = [second.steps[f"tta_val_{m['name']}"].outputs["predictions"][0].load() for m in MEMBERS]
    weights = report.set_index("member")["weight"]
    expected = sum(weights[m["name"]] * p["pneumonia"].to_numpy() for m, p in zip(MEMBERS, members))
    np.testing.assert_allclose(val["pneumonia"].to_numpy(), expected, atol=1e-6)

    # the registered version serves exactly this ensemble (members, weights, TTA views)
    promotions = [run.steps["promote_model"].outputs["promotion"][0].load() for run in (first, second)]
    assert promotions[0]["alias"] == "champion" and promotions[0]["reason"] == "no champion yet"
    mlflow.set_tracking_uri(cli.tracking_uri())
    client = mlflow.MlflowClient()
    version = second.steps["register_ensemble"].outputs["model_version"][0].load()
    assert promotions[1]["alias"] in client.get_model_version("cxr-ensemble-test", str(version)).aliases
    served = mlflow.pyfunc.load_model(f"models:/cxr-ensemble-test/{version}")
    val_set = second.steps["preprocess_images"].outputs["decoded_images"][0].load().split("val")
    frame = pd.DataFrame({"id": val_set.ids, "path": val_set.manifest["path"]})
    got = served.predict(frame, params={"views": ["original", "hflip"]})
    np.testing.assert_allclose(got["pneumonia"].to_numpy(), val["pneumonia"].to_numpy(), atol=1e-5)
