"""Calibration, operating points, patient-level bootstrap and subgroups, on synthetic scores
whose true probabilities are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from scipy.stats import norm, rankdata

from cxr.metrics.calibration import CALIBRATORS, apply_calibration, fit_calibration, logit, sigmoid
from cxr.metrics.calibration_error import adaptive_ece, calibration_errors, calibration_table, summary_errors
from cxr.metrics.operating_points import (OperatingPointConfig, fit_operating_points, operating_point_table,
                                          positive_columns, rates, sensitivity_point, specificity_point)
from cxr.metrics.subgroups import subgroup_table, too_small_warnings
from cxr.metrics.uncertainty import bootstrap_intervals, patient_resamples


def overconfident(n: int, seed: int, sharpness: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities, and scores that sharpen them ``sharpness`` times."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.02, 0.98, n)
    y = (rng.uniform(size=n) < truth).astype(np.float32)
    return y[:, None], sigmoid(sharpness * logit(truth))[:, None]


class TestCalibrators:
    def test_temperature_scaling_lowers_ece_and_keeps_auc(self):
        y_fit, p_fit = overconfident(4000, 0)
        y, p = overconfident(4000, 1)
        calibration = fit_calibration(y_fit, p_fit, ["x"], "temperature")
        assert calibration["labels"]["x"]["temperature"] == pytest.approx(3.0, rel=0.15)
        q = apply_calibration(p, calibration, ["x"])
        before, after = calibration_errors(y[:, 0], p[:, 0]), calibration_errors(y[:, 0], q[:, 0])
        assert after["ece"] < before["ece"] / 3 and after["adaptive_ece"] < before["adaptive_ece"] / 3
        assert after["brier"] < before["brier"]
        assert roc_auc_score(y[:, 0], q[:, 0]) == pytest.approx(roc_auc_score(y[:, 0], p[:, 0]), abs=1e-12)

    @pytest.mark.parametrize("method", ["platt", "isotonic"])
    def test_other_calibrators_lower_ece_on_held_out_scores(self, method: str):
        y_fit, p_fit = overconfident(4000, 2)
        y, p = overconfident(4000, 3)
        q = apply_calibration(p, fit_calibration(y_fit, p_fit, ["x"], method), ["x"])
        assert calibration_errors(y[:, 0], q[:, 0])["ece"] < calibration_errors(y[:, 0], p[:, 0])["ece"] / 2

    def test_platt_corrects_a_shifted_base_rate(self):
        y, p = overconfident(4000, 4, sharpness=1.0)
        shifted = sigmoid(logit(p) + 2.0)
        q = apply_calibration(shifted, fit_calibration(y, shifted, ["x"], "platt"), ["x"])
        assert abs(q.mean() - y.mean()) < 0.01 < abs(shifted.mean() - y.mean())

    def test_registry_holds_the_three_methods(self):
        assert CALIBRATORS.names() == ["isotonic", "platt", "temperature"]

    def test_per_label_only_known_labels_and_one_class_left_alone(self):
        y, p = overconfident(600, 5)
        y2 = np.concatenate([y, np.zeros_like(y)], axis=1)
        p2 = np.concatenate([p, p], axis=1)
        mask = np.ones_like(y2, bool)
        mask[:300, 0] = False
        with pytest.warns(UserWarning, match="'b' has one known class"):
            calibration = fit_calibration(y2, p2, ["a", "b"], mask=mask)
        assert calibration["labels"]["b"] is None
        alone = fit_calibration(y[300:], p[300:], ["a"])
        assert calibration["labels"]["a"] == pytest.approx(alone["labels"]["a"])
        q = apply_calibration(p2, calibration, ["a", "b"])
        assert np.array_equal(q[:, 1], p2[:, 1]) and not np.allclose(q[:, 0], p2[:, 0])

    def test_empty_calibration_is_the_identity_and_unlisted_labels_pass(self):
        p = np.array([[0.1, 0.9]])
        assert apply_calibration(p, {}, ["a", "b"]) is p
        calibration = {"method": "temperature", "labels": {"a": {"temperature": 2.0}}}
        q = apply_calibration(p, calibration, ["a", "b"])
        assert q[0, 1] == 0.9 and q[0, 0] == pytest.approx(sigmoid(logit(0.1) / 2))


class TestErrors:
    def test_ece_and_mce_by_hand(self):
        y = np.array([0, 1, 1, 1], float)
        p = np.array([0.1, 0.2, 0.8, 0.9])
        # 15 equal-width bins: {0.1}: |0 - 0.1|, {0.2}: |1 - 0.2|, {0.8}: 0.2, {0.9}: 0.1
        errors = calibration_errors(y, p, n_bins=15)
        assert errors["ece"] == pytest.approx((0.1 + 0.8 + 0.2 + 0.1) / 4)
        assert errors["mce"] == pytest.approx(0.8)
        assert errors["brier"] == pytest.approx(np.mean((p - y) ** 2))

    def test_adaptive_bins_hold_equal_counts(self):
        y = np.array([0, 1, 1, 1], float)
        p = np.array([0.1, 0.2, 0.8, 0.9])
        # two bins of two: {0.1, 0.2} -> |0.5 - 0.15|, {0.8, 0.9} -> |1 - 0.85|
        assert adaptive_ece(y, p, n_bins=2) == pytest.approx((0.35 + 0.15) / 2)

    def test_calibrated_scores_have_small_error(self):
        rng = np.random.default_rng(0)
        p = rng.uniform(size=20000)
        y = (rng.uniform(size=p.size) < p).astype(float)
        assert calibration_errors(y, p)["ece"] < 0.02

    def test_table_has_a_mean_row_per_stage(self):
        y, p = overconfident(500, 6)
        table = calibration_table(y, {"before": p, "after": apply_calibration(p, fit_calibration(y, p, ["x"]), ["x"])},
                                  ["x"])
        assert list(table["stage"]) == ["before", "before", "after", "after"]
        summary = summary_errors(table)
        assert summary["after_ece"] < summary["before_ece"]


class TestOperatingPoints:
    @pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.99])
    def test_sensitivity_point_reaches_its_target_at_the_highest_threshold(self, target: float):
        y, p = overconfident(1000, 7, sharpness=1.0)
        t = sensitivity_point(y[:, 0], p[:, 0], target)
        assert rates(y[:, 0], p[:, 0] >= t)["sensitivity"] >= target
        above = np.min(p[p > t]) if (p > t).any() else np.inf
        assert rates(y[:, 0], p[:, 0] >= above)["sensitivity"] < target

    @pytest.mark.parametrize("target", [0.8, 0.95])
    def test_specificity_point_reaches_its_target_at_the_lowest_threshold(self, target: float):
        y, p = overconfident(1000, 8, sharpness=1.0)
        t = specificity_point(y[:, 0], p[:, 0], target)
        assert rates(y[:, 0], p[:, 0] >= t)["specificity"] >= target
        below = np.max(p[p < t])
        assert rates(y[:, 0], p[:, 0] >= below)["specificity"] < target

    def test_full_specificity_threshold_is_finite(self):
        y = np.array([0, 0, 1, 1])
        t = specificity_point(y, np.array([0.9, 0.1, 0.2, 0.3]), 1.0)
        assert np.isfinite(t) and rates(y, np.array([0.9, 0.1, 0.2, 0.3]) >= t)["specificity"] == 1.0

    def test_rates_by_hand(self):
        y = np.array([1, 1, 1, 0, 0])
        out = rates(y, np.array([True, True, False, True, False]))
        assert out == pytest.approx({"sensitivity": 2 / 3, "specificity": 1 / 2, "ppv": 2 / 3, "npv": 1 / 2})
        assert np.isnan(rates(np.array([0, 0]), np.array([False, False]))["ppv"])

    def test_fit_and_table_on_two_labels(self):
        y, p = overconfident(400, 9, sharpness=1.0)
        y2, p2 = np.concatenate([y, 1 - y], 1), np.concatenate([p, 1 - p], 1)
        cfg = OperatingPointConfig(n_bootstrap=200)
        points = fit_operating_points(y2, p2, ["a", "b"], cfg)
        assert set(points["thresholds"]) == {"f1", "sensitivity", "specificity"}
        table = operating_point_table(y2, p2, ["a", "b"], points, groups=np.arange(400) // 2, cfg=cfg)
        assert len(table) == 6
        sens = table[table["operating_point"] == "sensitivity"]
        assert (sens["sensitivity"] >= 0.95).all()
        assert ((sens["sensitivity_low"] <= sens["sensitivity"]) & (sens["sensitivity"] <= sens["sensitivity_high"])).all()

    def test_positive_columns(self):
        predictions = pd.DataFrame({"id": ["a", "b", "c"], "x": [0.2, 0.7, np.nan]})
        points = {"thresholds": {"f1": {"x": 0.5}}}
        out = positive_columns(predictions, points, "f1", ["x"])
        assert out["x_positive"].tolist()[:2] == [False, True] and out["x_positive"].isna().tolist() == [False, False, True]
        with pytest.raises(ValueError, match="unknown operating point 'youden'"):
            positive_columns(predictions, points, "youden", ["x"])
        with pytest.raises(ValueError, match="no operating points"):
            positive_columns(predictions, {}, "f1", ["x"])


def rank_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC: the same value as roc_auc_score, without its per-call checks (the
    coverage simulation calls it 20,000 times)."""
    positives = y.sum()
    return (rankdata(score)[y].sum() - positives * (positives + 1) / 2) / (positives * (len(y) - positives))


class TestBootstrap:
    def test_replicates_draw_whole_patients(self):
        groups = np.array(["a", "a", "b", "c", "c", "c"])
        for rows in patient_resamples(groups, 50, seed=1):
            drawn = groups[rows]
            counts = pd.Series(drawn).value_counts()
            assert all(counts[g] % (groups == g).sum() == 0 for g in counts.index)
            assert sum(counts[g] // (groups == g).sum() for g in counts.index) == 3

    def test_auc_intervals_cover_the_true_value_at_about_the_nominal_rate(self):
        d = 1.0
        true_auc = norm.cdf(d / np.sqrt(2))
        covered = 0
        for seed in range(100):
            rng = np.random.default_rng(seed)
            y = rng.uniform(size=200) < 0.5
            score = rng.normal(size=200) + d * y
            assert rank_auc(y, score) == pytest.approx(roc_auc_score(y, score))
            stat = {"auc": lambda rows: rank_auc(y[rows], score[rows])}
            _, low, high = bootstrap_intervals(stat, np.arange(200), n_bootstrap=200, seed=seed)["auc"]
            covered += low <= true_auc <= high
        assert 86 <= covered <= 99

    def test_patient_resampling_widens_intervals_of_clustered_images(self):
        rng = np.random.default_rng(0)
        patient_mean = rng.normal(size=50)
        values = np.repeat(patient_mean, 8) + 0.1 * rng.normal(size=400)
        stat = {"mean": lambda rows: values[rows].mean()}
        _, lo_p, hi_p = bootstrap_intervals(stat, np.repeat(np.arange(50), 8), 300)["mean"]
        _, lo_i, hi_i = bootstrap_intervals(stat, np.arange(400), 300)["mean"]
        assert hi_p - lo_p > 2 * (hi_i - lo_i)


class TestSubgroups:
    def test_table_counts_auc_and_small_flags(self):
        manifest = pd.DataFrame({"sex": ["M"] * 40 + ["F"] * 12 + [""] * 8})
        y = np.array(([1, 0] * 20) + ([1] * 3 + [0] * 9) + [1] * 8, float)[:, None]
        p = np.where(y[:, 0] > 0, 0.8, 0.3)[:, None]
        p[:20] = 1 - p[:20]
        table = subgroup_table(manifest, y, p, ["x"], {"x": 0.5}).set_index("group")
        assert list(table.index) == ["F", "M"] and table.loc["M", "n"] == 40 and table.loc["F", "n_positive"] == 3
        assert table.loc["F", "auc"] == 1.0 and table.loc["M", "auc"] == pytest.approx(0.5)
        assert table.loc["F", "sensitivity"] == 1.0 and table.loc["M", "sensitivity"] == 0.5
        assert table.loc["F", "too_small"] and not table.loc["M", "too_small"]
        assert too_small_warnings(table.reset_index()) == [
            "subgroup sex=F, x: 3 positives of 12 (under 10 of a class): its figures are not reliable"]

    def test_no_attribute_columns_gives_an_empty_table(self):
        table = subgroup_table(pd.DataFrame({"id": ["a"]}), np.ones((1, 1)), np.ones((1, 1)), ["x"], {"x": 0.5})
        assert table.empty and "auc" in table.columns


def test_a_perfectly_separated_small_fit_set_does_not_saturate_the_scores():
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1], float)[:, None]
    p = np.array([0.1, 0.2, 0.2, 0.3, 0.35, 0.4, 0.6, 0.65, 0.7, 0.8, 0.8, 0.9])[:, None]
    for method in ("temperature", "platt"):
        q = apply_calibration(p, fit_calibration(y, p, ["x"], method), ["x"])
        assert 0.02 < q.min() and q.max() < 0.98, method
        assert np.argsort(q[:, 0], kind="stable").tolist() == np.argsort(p[:, 0], kind="stable").tolist()


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_a_label_ranked_backwards_is_never_reversed(method: str):
    y, p = overconfident(2000, 11, sharpness=1.0)
    backwards = 1 - p
    q = apply_calibration(backwards, fit_calibration(y, backwards, ["x"], method), ["x"])
    after, before = roc_auc_score(y[:, 0], q[:, 0]), roc_auc_score(y[:, 0], backwards[:, 0])
    assert before < 0.45 and after <= 0.5 + 1e-9, "calibration must not learn the ranking from its fit labels"
    if method != "isotonic":  # isotonic may only pool (tie) scores, never reorder them
        assert after == pytest.approx(before, abs=1e-12)
