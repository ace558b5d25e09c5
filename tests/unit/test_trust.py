"""A checkpoint's calibration and operating points: fitted into its metadata, applied wherever it
predicts (TTA, files, chunks, the registered pyfunc), carried through save/load and the
registry, and reported per set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.infer.batch import predict_chunks
from cxr.infer.ensemble import EnsembleModel, load_ensemble_model, save_ensemble_model
from cxr.infer.serving import predict_files
from cxr.infer.tta import SINGLE_VIEW, predict_imageset
from cxr.metrics.calibration import CalibrationConfig, apply_calibration
from cxr.metrics.operating_points import OperatingPointConfig, point_tags, rates
from cxr.metrics.trust import calibrated_checkpoint, pooled_curves, trust_metrics, trust_report
from cxr.models.checkpoint import load_checkpoint, save_checkpoint
from tests.helpers import random_checkpoint, write_images

POINTS = OperatingPointConfig(n_bootstrap=100)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    """A random checkpoint calibrated (Platt: it moves even near-constant scores) on 40 generated
    images, with their uncalibrated single-view scores."""
    raw_images = write_images(tmp_path_factory.mktemp("val"), 40)
    raw_images.manifest["sex"] = ["M", "F"] * 20
    val = preprocess_imageset(raw_images, PreprocessConfig(image_size=32), progress=False)
    checkpoint = random_checkpoint(labels=("opacity",))
    raw = predict_imageset(checkpoint, val, SINGLE_VIEW)["opacity"].to_numpy()[:, None]
    calibrated = calibrated_checkpoint(checkpoint, val, raw, CalibrationConfig(method="platt"), POINTS)
    return {"val": val, "raw": raw, "plain": checkpoint, "calibrated": calibrated}


def test_metadata_gains_calibration_and_points_and_weights_stay(fitted):
    calibrated, plain = fitted["calibrated"], fitted["plain"]
    assert calibrated.state_dict is plain.state_dict and not plain.meta.calibration
    assert calibrated.meta.calibration["method"] == "platt" and calibrated.meta.calibration["fit_on"] == "val"
    assert set(calibrated.meta.operating_points["thresholds"]) == {"f1", "sensitivity", "specificity"}
    assert set(point_tags(calibrated.meta.operating_points)) == {
        "operating_point.f1.opacity", "operating_point.sensitivity.opacity", "operating_point.specificity.opacity"}


def test_every_prediction_path_is_calibrated(fitted):
    val, calibrated = fitted["val"], fitted["calibrated"]
    expected = apply_calibration(fitted["raw"], calibrated.meta.calibration, ["opacity"])[:, 0]
    assert np.abs(expected - fitted["raw"][:, 0]).max() > 1e-3, "the calibration must move the scores"
    np.testing.assert_allclose(predict_imageset(calibrated, val, SINGLE_VIEW)["opacity"], expected, atol=1e-9)
    paths = val.manifest["path"].tolist()
    np.testing.assert_allclose(predict_files(calibrated, paths, val.ids, guardrails=False)["opacity"], expected,
                               atol=1e-6)
    chunks = pd.concat(predict_chunks(calibrated, val, chunk_size=16, progress=False, guardrails=False))
    np.testing.assert_allclose(chunks["opacity"], expected, atol=1e-6)


def test_operating_point_columns_reach_their_target_where_fitted(fitted):
    val, calibrated = fitted["val"], fitted["calibrated"]
    served = predict_files(calibrated, val.manifest["path"].tolist(), val.ids, guardrails=False,
                           operating_point="sensitivity")
    threshold = calibrated.meta.operating_points["thresholds"]["sensitivity"]["opacity"]
    assert served["opacity_positive"].tolist() == (served["opacity"] >= threshold).tolist()
    assert rates(val.labels[:, 0].astype(int), served["opacity_positive"].to_numpy(bool))["sensitivity"] >= 0.95
    with pytest.raises(ValueError, match="unknown operating point 'youden'"):
        predict_files(calibrated, val.manifest["path"].tolist()[:2], guardrails=False, operating_point="youden")
    with pytest.raises(ValueError, match="no operating points"):
        predict_files(fitted["plain"], val.manifest["path"].tolist()[:2], guardrails=False, operating_point="f1")


def test_save_load_and_ensembles_carry_them(fitted, tmp_path: Path):
    calibrated = fitted["calibrated"]
    loaded = load_checkpoint(save_checkpoint(calibrated, tmp_path / "ckpt"))
    assert loaded.meta.calibration == calibrated.meta.calibration
    assert loaded.meta.operating_points == calibrated.meta.operating_points
    ensemble = EnsembleModel({"m": calibrated}, np.ones((1, 1)), "equal", calibrated.meta.operating_points)
    assert load_ensemble_model(save_ensemble_model(ensemble, tmp_path / "ens")).operating_points == \
        calibrated.meta.operating_points
    with pytest.raises(ValueError, match="no operating points"):
        predict_files(EnsembleModel({"m": calibrated}, np.ones((1, 1)), "equal"),
                      fitted["val"].manifest["path"].tolist()[:1], operating_point="f1")


def test_report_tables_per_set(fitted):
    calibrated, val = fitted["calibrated"], fitted["val"]
    report = trust_report(calibrated, {"val": (val, fitted["raw"])}, POINTS)
    assert report.calibration["stage"].tolist() == ["before", "before", "after", "after"]
    assert set(report.operating_points["operating_point"]) == {"f1", "sensitivity", "specificity"}
    assert report.intervals["metric"].tolist() == ["mean_auc", "mean_average_precision", "mean_ece", "mean_brier"]
    assert (report.intervals["low"] <= report.intervals["value"]).all()
    assert (report.intervals["value"] <= report.intervals["high"]).all()
    assert report.subgroups["group"].tolist() == ["F", "M"] and report.subgroups["n"].tolist() == [20, 20]
    assert len(report.warnings) == 2 and "sex=F" in report.warnings[0]
    metrics = trust_metrics(report)
    assert {"trust/val_before_ece", "trust/val_after_ece", "trust/val_mean_auc_low",
            "trust/val_mean_auc_high"} <= set(metrics)
    y, before, after = pooled_curves(calibrated, {"val": (val, fitted["raw"])})["val"]
    assert len(y) == 40 and np.array_equal(before, fitted["raw"][:, 0]) and not np.allclose(before, after)


def test_registered_pyfunc_serves_calibrated_scores_at_an_operating_point(fitted, registry):
    import mlflow

    from steps.registry.lifecycle import log_served_model

    calibrated, val = fitted["calibrated"], fitted["val"]
    with mlflow.start_run():
        version = log_served_model(calibrated, "cxr-trust-test")
    served = mlflow.pyfunc.load_model(f"models:/cxr-trust-test/{version}")
    request = pd.DataFrame({"path": val.manifest["path"], "id": val.ids})
    got = served.predict(request, params={"operating_point": "specificity", "guardrails": False})
    direct = predict_files(calibrated, val.manifest["path"].tolist(), val.ids, guardrails=False,
                           operating_point="specificity")
    np.testing.assert_allclose(got["opacity"], direct["opacity"], atol=1e-6)
    assert got["opacity_positive"].tolist() == direct["opacity_positive"].tolist()
    assert "opacity_positive" not in served.predict(request, params={"guardrails": False}).columns
