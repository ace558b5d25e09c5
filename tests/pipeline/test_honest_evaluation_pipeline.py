"""Honest evaluation through ZenML on generated images: the proxy split, a labelled and an
unlabelled external set, the gap report, promotion on an external holdout, and the leakage
audit (warn, then fail before training)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import pytest
from sklearn.metrics import roc_auc_score

from cxr.errors import DataError
from tests.helpers import write_class_tree
from tests.pipeline.conftest import (
    FAST_INTERVALS, folders_source, output, run_and_fetch, statuses, use_stack_tracking, write_yaml,
)

pytestmark = pytest.mark.slow

NAME = "cxr-holdout-pipeline-test"


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> dict[str, Path]:
    """``train`` (16 patients per class, 2 images each), ``site_b`` (labelled, other ids),
    ``site_c`` (unlabelled) and ``test`` (unlabelled, holding a flipped copy of a training image)."""
    root = tmp_path_factory.mktemp("sites")
    train = write_class_tree(root / "train", n_per_class=32, size=32)
    site_b = write_class_tree(root / "site_b_raw", n_per_class=12, size=32, seed=5)
    for path in sorted(site_b.rglob("*.png")):
        target = root / "site_b" / path.parent.name / f"siteb_{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
    (root / "site_c").mkdir()
    for k, path in enumerate(sorted((root / "site_b").rglob("*.png"))[::4]):
        shutil.copy(path, root / "site_c" / f"c{k}.png")
    (root / "test").mkdir()
    write_class_tree(root / "test_raw", n_per_class=4, size=32, seed=9)
    for k, path in enumerate(sorted((root / "test_raw").rglob("*.png"))):
        shutil.copy(path, root / "test" / f"t{k}.png")
    original = train / "PNEUMONIA" / "patientP3_img6.png"
    cv2.imwrite(str(root / "test" / "flipped.png"), cv2.flip(cv2.imread(str(original), cv2.IMREAD_GRAYSCALE), 1))
    return {"train": train, "site_b": root / "site_b", "site_c": root / "site_c", "test": root / "test",
            "original": original}


def write_config(path: Path, sites: dict[str, Path], action: str) -> Path:
    images = {"source": "images", "label_names": ["pneumonia"]}
    return write_yaml(path, {"parameters": {**FAST_INTERVALS,
        "data": folders_source(sites["train"]),
        "test_data": {**images, "path": str(sites["test"])},
        "submission_path": str(path.parent / "submission.csv"),
        "split": {"val_fraction": 0.25, "proxy": {"fraction": 0.25}},
        "preprocess": {"image_size": 32, "clahe": False},
        "model": {"backbone": "resnet10t"}, "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2},
        "tta_views": ["original"], "registered_model_name": NAME,
        "external": [{"name": "site_b", "data": {**folders_source(sites["site_b"]),
                                                 "patient_id_pattern": r"^(siteb_patient\w\d+)"}},
                     {"name": "site_c", "data": {**images, "path": str(sites["site_c"])}}],
        "promotion": {"holdout": "site_b", "n_bootstrap": 200},
        "audit": {"action": action}}})


@pytest.fixture(scope="module")
def run(sites, tmp_path_factory):
    return run_and_fetch("train", write_config(tmp_path_factory.mktemp("warn") / "warn.yaml", sites, "warn"),
                         "honest-evaluation")


def test_proxy_holds_out_the_highest_numbered_patients_of_each_family(run):
    split = output(run, "split_dataset", "split_images").manifest
    proxy = split[split["split"] == "proxy"]
    assert sorted(proxy["patient_id"].unique()) == [f"patient{c}{n}" for c in "NP" for n in (12, 13, 14, 15)]
    assert not set(proxy["patient_id"]) & set(split.loc[split["split"] != "proxy", "patient_id"])
    history = output(run, "finetune", "history")
    assert {"val_auc", "proxy_auc"} <= set(history.columns)


def test_external_metrics_are_scikit_learns_and_logged_under_the_set_name(run):
    import mlflow

    site = output(run, "preprocess_external_site_b", "decoded_images")
    predictions = output(run, "tta_predict_external_site_b", "predictions")
    expected = roc_auc_score(site.labels[:, 0], predictions.set_index("id").loc[site.ids, "pneumonia"])
    metrics = output(run, "evaluate_external_site_b", "external_metrics")
    assert metrics["mean_auc"] == pytest.approx(expected, abs=1e-9)
    report, val_report = output(run, "evaluate_external_site_b", "external_report"), output(run, "evaluate", "val_report")
    assert report["threshold"].tolist() == val_report["threshold"].tolist()
    p = predictions.set_index("id").loc[site.ids, "pneumonia"].to_numpy()
    assert report["tp"].iloc[0] == int(((p >= report["threshold"].iloc[0]) & (site.labels[:, 0] > 0.5)).sum())
    assert output(run, "evaluate_external_site_c", "external_metrics") == {}
    use_stack_tracking()
    logged = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.mlflow.runName = '{run.name}'")
    assert logged["metrics.external/site_b/mean_auc"].iloc[0] == pytest.approx(expected, abs=1e-9)


def test_report_shows_val_proxy_and_external_with_the_gaps(run):
    table = output(run, "generalisation_report", "generalisation_report").set_index("label")
    val, proxy = output(run, "evaluate", "val_metrics"), output(run, "evaluate", "proxy_metrics")
    external = output(run, "evaluate_external_site_b", "external_metrics")
    assert list(table.columns) == ["val", "proxy", "external/site_b", "gap_proxy", "gap_external/site_b"]
    row = table.loc["pneumonia"]
    assert (row["val"], row["proxy"], row["external/site_b"]) == pytest.approx(
        (val["mean_auc"], proxy["mean_auc"], external["mean_auc"]))
    assert row["gap_external/site_b"] == pytest.approx(val["mean_auc"] - external["mean_auc"])


def test_promotion_scored_the_external_holdout_and_tagged_it(run):
    import mlflow

    decision = output(run, "promote_model", "promotion")
    assert decision["holdout"] == "site_b" and decision["alias"] == "champion"
    use_stack_tracking()
    tags = mlflow.MlflowClient().get_model_version(NAME, "1").tags
    site = output(run, "preprocess_external_site_b", "decoded_images")
    assert tags["promotion_holdout"] == "site_b" and tags["promotion_holdout_hash"] == site.content_hash()
    assert tags["promotion_holdout_images"] == str(len(site)) == "24"
    assert float(tags["proxy_mean_auc"]) == pytest.approx(output(run, "evaluate", "proxy_metrics")["mean_auc"], abs=1e-6)


def test_audit_finds_the_flipped_training_image_in_the_test_folder(run):
    from cxr.data.leakage import hashed_id

    leaks = output(run, "audit_leakage", "leaks")
    flipped = leaks[(leaks["id_b"] == hashed_id("flipped")) & (leaks["part_b"] == "test")]
    assert flipped[["kind", "part_a", "id_a"]].values.tolist() == [["near", "train", hashed_id("patientP3_img6")]]
    assert not leaks[["id_a", "id_b"]].isin(["flipped", "patientP3_img6"]).any().any(), "ids are hashed"
    counts = output(run, "audit_leakage", "leak_counts")
    assert counts["near/train~test"] >= 1 and counts["patient"] == 0
    assert counts["exact"] == counts["exact/site_b~site_c"] == 6, "site_c holds copies of 6 site_b images"


def test_audit_fail_stops_the_run_before_training(sites, tmp_path: Path):
    from zenml.client import Client

    config = write_config(tmp_path / "fail.yaml", sites, "fail")
    with pytest.raises(DataError, match="^step audit_leakage: leakage audit: "):
        run_and_fetch("train", config, "honest-evaluation-fail")
    failed = Client().list_pipeline_runs(sort_by="desc:created", size=1)[0]
    steps = statuses(failed)
    assert steps["audit_leakage"] == "failed"
    assert "finetune" not in steps or steps["finetune"] not in ("completed", "cached")
    assert str(failed.status.value) == "failed"
