"""Multi-label training with unknown labels and the CFT branch through ZenML, on generated
images in the NIH Data_Entry format; GA knobs alone re-run only CFT and what follows."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cxr.data.label_tables import NIH_FINDINGS
from tests.conftest import synthetic_xray

pytestmark = pytest.mark.slow

FINDINGS = list(NIH_FINDINGS)


def write_nih_folder(root: Path, n: int = 64, size: int = 32) -> Path:
    """``images/`` plus a Data_Entry-style ``labels.csv``: Effusion images carry an opacity,
    others get random findings; two images per patient."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        effusion = i % 2 == 0
        extra = [FINDINGS[j] for j in rng.choice([0, 1, 3], size=rng.integers(0, 2), replace=False)]
        names = (["Effusion"] if effusion else []) + extra
        cv2.imwrite(str(root / "images" / f"{i:08d}_000.png"), synthetic_xray(rng, size, effusion))
        rows.append({"Image Index": f"{i:08d}_000.png", "Finding Labels": "|".join(names) or "No Finding",
                     "Patient ID": i // 2})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


@pytest.fixture(scope="module")
def nih_data(tmp_path_factory) -> Path:
    return write_nih_folder(tmp_path_factory.mktemp("nih"))


def write_config(folder: Path, data: Path, population: int) -> Path:
    path = folder / f"nih-{population}.yaml"
    path.write_text(yaml.safe_dump({"parameters": {
        "data": {"source": "nih", "path": str(data / "labels.csv"), "image_dir": str(data / "images")},
        "split": {"val_fraction": 0.25},
        "preprocess": {"image_size": 32},
        "model": {"backbone": "resnet10t"},
        "train": {"epochs": 2, "batch_size": 8, "loss": "pos_weight_bce", "negative_keep_fraction": 0.5},
        "tta_views": ["original"],
        "registered_model_name": "cxr-nih-test",
        "cft": {"population": population, "generations": 5, "patience": 5, "min_known": 2},
        "promotion": {"n_bootstrap": 200},
    }, "model": {"name": "cxr-nih-test"}}))
    return path


def test_cft_branch_updates_only_the_last_layer_and_reruns_alone(tmp_path: Path, nih_data: Path):
    from zenml.client import Client

    from pipelines import runner as cli

    data = nih_data
    first = Client().get_pipeline_run(cli.train(str(write_config(tmp_path, data, 8)), "nih-first").id)
    assert str(first.status.value) == "completed"
    before = first.steps["finetune"].outputs["checkpoint"][0].load()
    after = first.steps["cft_finetune"].outputs["cft_checkpoint"][0].load()
    assert after.meta.label_names == FINDINGS
    changed = {k for k in before.state_dict if not torch.equal(before.state_dict[k], after.state_dict[k])}
    assert changed <= {"head.fc.weight", "head.fc.bias"}
    report = first.steps["cft_finetune"].outputs["cft_report"][0].load()
    assert list(report["label"]) == FINDINGS
    tuned = report[report["skipped"] == ""]
    assert "Effusion" in set(tuned["label"]) and (tuned["val_fitness_after"] >= tuned["val_fitness_before"]).all()
    assert (report.loc[report["skipped"] != "", "train_known"] >= 0).all()
    features = first.steps["cft_features"].outputs["train_features"][0].load()
    assert features.shape == (len(first.steps["split_dataset"].outputs["split_images"][0].load().split("train")), 512)
    metrics = first.steps["evaluate"].outputs["val_metrics"][0].load()
    assert 0 <= metrics["min_auc"] <= metrics["median_auc"] <= metrics["max_auc"] <= 1

    second = Client().get_pipeline_run(cli.train(str(write_config(tmp_path, data, 12)), "nih-second").id)
    status = {name: str(step.status.value) for name, step in second.steps.items()}
    assert status["finetune"] == status["cft_features"] == "cached"
    assert status["cft_finetune"] == status["evaluate"] == "completed"


def test_promotion_moves_aliases_and_mirrors_the_zenml_stage():
    import mlflow
    from zenml.client import Client

    from pipelines import runner as cli

    client = Client()
    runs = {name: client.get_pipeline_run(name) for name in ("nih-first", "nih-second")}
    first = runs["nih-first"].steps["promote_model"].outputs["promotion"][0].load()
    second = runs["nih-second"].steps["promote_model"].outputs["promotion"][0].load()
    assert first["alias"] == "champion" and first["reason"] == "no champion yet"
    assert second["alias"] in ("champion", "challenger") and second["champion_before"] == 1
    assert second["alias"] == ("champion" if second["ci_low"] > 0 else "challenger")
    mlflow.set_tracking_uri(cli.tracking_uri())
    champion = mlflow.MlflowClient().get_model_version_by_alias("cxr-nih-test", "champion")
    assert int(champion.version) == (2 if second["alias"] == "champion" else 1)
    stages = {str(getattr(v.stage, "value", v.stage)) for v in client.list_model_versions("cxr-nih-test").items}
    assert "production" in stages


def test_inference_pipeline_streams_new_images_through_the_champion(tmp_path: Path, nih_data: Path):
    import mlflow

    from cxr.infer.serving import predict_files
    from pipelines import runner as cli
    from steps.registry.lifecycle import served_model

    config = tmp_path / "infer.yaml"
    config.write_text(yaml.safe_dump({"parameters": {
        "data": {"source": "images", "path": str(nih_data / "images"), "label_names": FINDINGS},
        "registered_model_name": "cxr-nih-test", "output_path": str(tmp_path / "pred.csv"), "chunk_size": 16,
    }}))
    mlflow.set_tracking_uri("")  # as in a fresh process: the step must find the stack's registry itself
    run = cli.infer(str(config), "nih-infer")
    assert str(run.status.value) == "completed"
    written = pd.read_csv(tmp_path / "pred.csv")
    assert len(written) == 64 and list(written.columns) == ["id", *FINDINGS]
    mlflow.set_tracking_uri(cli.tracking_uri())
    champion = served_model("models:/cxr-nih-test@champion")
    paths = sorted(str(p) for p in (nih_data / "images").iterdir())[:5]
    expected = predict_files(champion, paths, [Path(p).stem for p in paths])
    got = written.set_index("id").loc[expected["id"], FINDINGS].to_numpy()
    np.testing.assert_allclose(got, expected[FINDINGS].to_numpy(), atol=1e-5)
