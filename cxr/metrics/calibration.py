"""Whether a score of 0.8 means 80%: per-label calibrators fitted on a labelled split
(temperature scaling, Platt, isotonic); ``cxr.metrics.calibration_error`` measures it.

A calibration is plain JSON (``{"method", "fit_on", "labels": {label: params}}``) so that it
travels in a checkpoint's metadata and is applied wherever the checkpoint predicts.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import minimize, minimize_scalar
from sklearn.isotonic import IsotonicRegression

from cxr.registry import Registry

CALIBRATORS = Registry("calibrator")
CalibratorName = CALIBRATORS.choice()
EPS = 1e-6
MIN_SLOPE = 1e-3


class CalibrationConfig(BaseModel):
    """``parameters.calibration``: the calibrator, the split it is fitted on, and the bins of ECE/MCE."""

    model_config = ConfigDict(extra="forbid")

    method: CalibratorName = Field("platt", description="platt (default: on the Kermany proxy it gave the lowest "
                                   "Brier and adaptive ECE, and only it corrects the base rate a pos_weight loss "
                                   "shifts), temperature or isotonic")
    fit_on: str = Field("val", pattern="^(val|proxy)$", description="labelled split the calibrator is fitted "
                        "on: val, or proxy (needs split.proxy)")
    n_bins: int = Field(15, ge=2, le=100, description="bins of ECE, adaptive ECE, MCE and the reliability diagram")


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def soft_targets(y: np.ndarray) -> np.ndarray:
    """Platt's (1999) targets: (N+ + 1) / (N+ + 2) for positives, 1 / (N- + 2) for negatives. On a
    small, perfectly separated fit set 0/1 targets drive the fit to infinitely sharp scores."""
    positives = float(y.sum())
    return np.where(y > 0.5, (positives + 1) / (positives + 2), 1 / (len(y) - positives + 2))


def log_loss(z: np.ndarray, targets: np.ndarray) -> float:
    """Mean binary cross-entropy of logits ``z`` against soft ``targets`` (numerically stable)."""
    return float(np.mean(np.logaddexp(0.0, z) - targets * z))


@CALIBRATORS.register("temperature")
class TemperatureScaling:
    """``sigmoid(logit(p) / T)`` with T > 0 minimising the log loss against Platt's targets (Guo
    et al. 2017): one parameter, monotone, so AUC and every ranking stay as they were."""

    @staticmethod
    def fit(y: np.ndarray, p: np.ndarray) -> dict:
        z, targets = logit(p), soft_targets(y)
        best = minimize_scalar(lambda log_t: log_loss(z / np.exp(log_t), targets), bounds=(-4.0, 4.0),
                               method="bounded")
        return {"temperature": float(np.exp(best.x))}

    @staticmethod
    def apply(p: np.ndarray, params: dict) -> np.ndarray:
        return sigmoid(logit(p) / params["temperature"])


@CALIBRATORS.register("platt")
class PlattScaling:
    """``sigmoid(a logit(p) + b)`` fitted on the logit against Platt's targets (Platt 1999):
    corrects a shifted base rate as well as over-confidence. The slope is held positive: a
    negative one would reverse a label that ranks its fit set backwards, learning the ranking
    from the labels calibration is fitted on (and flattering any AUC measured there)."""

    @staticmethod
    def fit(y: np.ndarray, p: np.ndarray) -> dict:
        z, targets = logit(p), soft_targets(y)
        best = minimize(lambda ab: log_loss(ab[0] * z + ab[1], targets), x0=np.array([1.0, 0.0]), method="L-BFGS-B",
                        bounds=[(MIN_SLOPE, None), (None, None)])
        return {"a": float(best.x[0]), "b": float(best.x[1])}

    @staticmethod
    def apply(p: np.ndarray, params: dict) -> np.ndarray:
        return sigmoid(params["a"] * logit(p) + params["b"])


@CALIBRATORS.register("isotonic")
class IsotonicCalibration:
    """A non-decreasing step function of p (Zadrozny and Elkan 2002): the most flexible, needs
    the most images, and ties scores within a step (AUC may move slightly)."""

    @staticmethod
    def fit(y: np.ndarray, p: np.ndarray) -> dict:
        model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return {"x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}

    @staticmethod
    def apply(p: np.ndarray, params: dict) -> np.ndarray:
        return np.interp(p, params["x"], params["y"])


def known_column(y: np.ndarray, p: np.ndarray, mask: np.ndarray | None, j: int) -> tuple[np.ndarray, np.ndarray]:
    keep = slice(None) if mask is None else mask[:, j]
    return (y[keep, j] > 0.5).astype(np.float64), np.asarray(p[keep, j], np.float64)


def fit_calibration(y: np.ndarray, p: np.ndarray, label_names: Sequence[str], method: str = "platt",
                    mask: np.ndarray | None = None, fit_on: str = "val") -> dict:
    """One ``method`` calibrator per label on its known labels; a label with one known class
    keeps its scores (params None) with a warning, since nothing there says how to move them."""
    calibrator = CALIBRATORS.get(method)
    labels: dict[str, dict | None] = {}
    for j, name in enumerate(label_names):
        yj, pj = known_column(y, p, mask, j)
        if len(np.unique(yj)) < 2:
            warnings.warn(f"calibration: label {name!r} has one known class on {fit_on}; left uncalibrated")
            labels[name] = None
            continue
        labels[name] = calibrator.fit(yj, pj)
    return {"method": method, "fit_on": fit_on, "labels": labels}


def apply_calibration(probs: np.ndarray, calibration: dict, label_names: Sequence[str]) -> np.ndarray:
    """``probs`` (N, L) in ``label_names`` order through ``calibration``; labels it does not
    cover, or left uncalibrated, pass unchanged. An empty calibration is the identity."""
    if not calibration:
        return probs
    calibrator = CALIBRATORS.get(calibration["method"])
    out = np.array(probs, np.float64, copy=True)
    for j, name in enumerate(label_names):
        params = calibration["labels"].get(name)
        if params is not None:
            out[:, j] = calibrator.apply(out[:, j], params)
    return out
