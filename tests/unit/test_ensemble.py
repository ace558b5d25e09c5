"""Ensemble member selection and weighting on val predictions."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.infer.ensemble import EnsembleConfig, cross_fit_predictions, fit_ensemble
from cxr.metrics.classification import mean_auc

RNG = np.random.default_rng(0)
Y = (RNG.random((300, 2)) < 0.4).astype(np.float32)
MASK = np.ones_like(Y, bool)


def noisy(strength: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(Y * strength + rng.random(Y.shape) * (1 - strength), 0, 1)


PREDS = {"strong": noisy(0.5, 1), "also_strong": noisy(0.45, 2), "weak": noisy(0.05, 3)}


def test_weak_members_are_dropped_with_a_reason():
    ensemble = fit_ensemble(PREDS, Y, MASK, EnsembleConfig(max_gap=0.05))
    assert ensemble.members == ["strong", "also_strong"] and "behind the best" in ensemble.dropped["weak"]
    floor = fit_ensemble(PREDS, Y, MASK, EnsembleConfig(auc_floor=0.99, max_gap=1.0))
    assert "below the floor" in floor.dropped["weak"]


def test_auc_weights_are_proportional_to_val_auc():
    ensemble = fit_ensemble(PREDS, Y, MASK, EnsembleConfig(max_gap=0.05))
    aucs = np.array([ensemble.member_auc[m] for m in ensemble.members])
    np.testing.assert_allclose(ensemble.weights[:, 0], aucs / aucs.sum())
    combined = ensemble.combine(PREDS)
    np.testing.assert_allclose(combined, (PREDS["strong"] * aucs[0] + PREDS["also_strong"] * aucs[1]) / aucs.sum())
    assert mean_auc(Y, combined, MASK) >= max(ensemble.member_auc.values()) - 0.005


@pytest.mark.parametrize("weighting", ["equal", "rank", "stack"])
def test_other_weightings_sum_to_one_and_beat_the_weak_member(weighting: str):
    ensemble = fit_ensemble(PREDS, Y, MASK, EnsembleConfig(max_gap=1.0, weighting=weighting))
    np.testing.assert_allclose(ensemble.weights.sum(axis=0), 1.0)
    assert (ensemble.weights >= 0).all()
    assert mean_auc(Y, ensemble.combine(PREDS), MASK) > ensemble.member_auc["weak"] + 0.1
    if weighting == "stack":
        assert (ensemble.weights[2] < ensemble.weights[0]).all()


def test_cross_fit_puts_each_row_back_in_place():
    groups = np.arange(len(Y)) // 3
    cross_fit = cross_fit_predictions(PREDS, Y, MASK, groups, EnsembleConfig(max_gap=1.0, weighting="equal"))
    np.testing.assert_allclose(cross_fit, sum(PREDS.values()) / 3)


def test_cross_fit_exposes_a_stacker_that_fits_noise():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 1)) < 0.4).astype(np.float32)
    noise = {f"noise{i}": rng.random(y.shape) for i in range(20)}
    mask, cfg = np.ones_like(y, bool), EnsembleConfig(max_gap=1.0, weighting="stack")
    in_sample = mean_auc(y, fit_ensemble(noise, y, mask, cfg).combine(noise), mask)
    held_out = mean_auc(y, cross_fit_predictions(noise, y, mask, np.arange(200) // 2, cfg), mask)
    assert in_sample > 0.6 and abs(held_out - 0.5) < 0.05
