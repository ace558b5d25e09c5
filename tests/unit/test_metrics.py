"""Per-label metrics over known labels, tuned thresholds and plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from cxr.metrics.classification import (best_f1_threshold, label_report, mean_auc, per_label_auc,
                                        summary_metrics)
from cxr.metrics.plots import confusion_matrices, roc_curves, training_curves

RNG = np.random.default_rng(0)
Y = np.column_stack([RNG.integers(0, 2, 200), RNG.integers(0, 2, 200)]).astype(np.float32)
P = np.clip(Y * 0.4 + RNG.random((200, 2)) * 0.6, 0, 1)
MASK = np.ones_like(Y, bool)
MASK[:50, 1] = False


def test_auc_uses_known_labels_only():
    aucs = per_label_auc(Y, P, MASK)
    assert aucs[0] == pytest.approx(roc_auc_score(Y[:, 0], P[:, 0]))
    assert aucs[1] == pytest.approx(roc_auc_score(Y[50:, 1], P[50:, 1]))
    assert mean_auc(Y, P, MASK) == pytest.approx(aucs.mean())


def test_single_class_label_has_no_auc_and_leaves_the_mean():
    y = Y.copy()
    y[:, 1] = 0
    aucs = per_label_auc(y, P)
    assert np.isnan(aucs[1]) and mean_auc(y, P) == pytest.approx(aucs[0])


def test_tuned_threshold_maximises_f1_within_range():
    t = best_f1_threshold(Y[:, 0], P[:, 0])
    grid = np.unique(P[:, 0])
    best_on_grid = max(f1_score(Y[:, 0], P[:, 0] >= g) for g in grid if 0.01 <= g <= 0.99)
    assert f1_score(Y[:, 0], P[:, 0] >= t) == pytest.approx(best_on_grid)
    assert 0.3 <= best_f1_threshold(Y[:, 0], P[:, 0], 0.3, 0.4) <= 0.4


def test_report_matches_scikit_learn():
    report = label_report(Y, P, ["a", "b"], MASK)
    row = report.iloc[1]
    assert row["n_known"] == 150
    assert row["auc"] == pytest.approx(roc_auc_score(Y[50:, 1], P[50:, 1]))
    assert row["average_precision"] == pytest.approx(average_precision_score(Y[50:, 1], P[50:, 1]))
    pred = P[50:, 1] >= row["threshold"]
    assert row["f1"] == pytest.approx(f1_score(Y[50:, 1], pred))
    assert row["tp"] == int((pred & (Y[50:, 1] == 1)).sum())
    summary = summary_metrics(report)
    assert summary["mean_auc"] == pytest.approx(report["auc"].mean()) and "auc_b" in summary
    assert summary["min_auc"] == pytest.approx(report["auc"].min())
    assert summary["min_auc"] <= summary["median_auc"] <= summary["max_auc"] == pytest.approx(report["auc"].max())


def test_fixed_thresholds_are_used_as_given():
    report = label_report(Y, P, ["a", "b"], thresholds=np.array([0.5, 0.7]))
    assert report["threshold"].tolist() == [0.5, 0.7]


def pixels(image) -> np.ndarray:
    """The RGB pixels of a rendered plot."""
    return np.asarray(image.convert("RGB"))


def test_plots_render_their_data():
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [0.6, 0.4], "val_loss": [0.5, 0.45],
                            "val_auc": [0.8, 0.85]})
    other = history.assign(val_auc=[0.6, 0.95])
    perfect = np.where(Y > 0.5, 0.9, 0.1)
    pairs = [(roc_curves(Y, P, ["a", "b"], MASK), roc_curves(Y, perfect, ["a", "b"], MASK)),
             (training_curves(history), training_curves(other)),
             (confusion_matrices(label_report(Y, P, ["a", "b"])), confusion_matrices(label_report(Y, perfect, ["a", "b"])))]
    for image, changed in pairs:
        assert image.size[0] > 200 and image.size[1] > 200
        assert len(np.unique(pixels(image).reshape(-1, 3), axis=0)) > 10, "more than a blank canvas"
        assert image.size != changed.size or not np.array_equal(pixels(image), pixels(changed)), "drawn from the data"


def test_many_labels_get_one_roc_panel_each():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 14)) < 0.3).astype(np.float32)
    p = np.clip(y * 0.3 + rng.random((200, 14)) * 0.7, 0, 1)
    overlaid, grid = roc_curves(y[:, :2], p[:, :2], ["a", "b"]), roc_curves(y, p, [f"l{j}" for j in range(14)])
    assert grid.size[0] > 2 * overlaid.size[0] and grid.size[1] > overlaid.size[1]
