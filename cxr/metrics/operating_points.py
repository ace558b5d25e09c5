"""Operating points: per-label thresholds chosen on a labelled split for a stated purpose (best
F1, a target sensitivity for rule-out, a target specificity for rule-in), and what each gives
(sensitivity, specificity, PPV, NPV with patient-level bootstrap intervals) on any labelled set.

Stored in a checkpoint's metadata as ``{"fit_on", "targets", "thresholds": {point: {label: t}}}``;
a caller asking for ``operating_point: <point>`` gets ``<label>_positive = p >= t``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import roc_curve

from cxr.metrics.classification import best_f1_threshold
from cxr.metrics.uncertainty import bootstrap_intervals
from cxr.registry import Registry

OPERATING_POINTS = Registry("operating point")
OperatingPointName = OPERATING_POINTS.choice()


class OperatingPointConfig(BaseModel):
    """``parameters.operating_points``: which points are fitted, their targets and the intervals."""

    model_config = ConfigDict(extra="forbid")

    points: list[OperatingPointName] = Field(default_factory=OPERATING_POINTS.names)
    target_sensitivity: float = Field(0.95, gt=0, le=1)
    target_specificity: float = Field(0.95, gt=0, le=1)
    report: OperatingPointName = Field("f1", description="the point the subgroup table and model card lead with")
    n_bootstrap: int = Field(1000, ge=50, description="patient-level bootstrap replicates of every interval")
    confidence: float = Field(0.95, gt=0.5, lt=1)
    seed: int = 0


def _finite(threshold: float, p: np.ndarray) -> float:
    """roc_curve's first threshold is +inf (nothing positive): the smallest float above max(p)."""
    return float(np.nextafter(p.max(), np.inf)) if not np.isfinite(threshold) else float(threshold)


@OPERATING_POINTS.register("f1")
def f1_point(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold that maximises F1 (the one the evaluation tables use)."""
    return best_f1_threshold(y, p)


@OPERATING_POINTS.register("sensitivity")
def sensitivity_point(y: np.ndarray, p: np.ndarray, target_sensitivity: float = 0.95) -> float:
    """The highest threshold whose sensitivity reaches ``target_sensitivity`` (rule-out)."""
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    return _finite(thresholds[int(np.argmax(tpr >= target_sensitivity - 1e-12))], p)


@OPERATING_POINTS.register("specificity")
def specificity_point(y: np.ndarray, p: np.ndarray, target_specificity: float = 0.95) -> float:
    """The lowest threshold whose specificity reaches ``target_specificity`` (rule-in)."""
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    return _finite(thresholds[int(np.flatnonzero(1 - fpr >= target_specificity - 1e-12)[-1])], p)


def _known(y: np.ndarray, p: np.ndarray, mask: np.ndarray | None, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keep = np.ones(len(y), bool) if mask is None else mask[:, j]
    return (y[keep, j] > 0.5).astype(int), np.asarray(p[keep, j], np.float64), np.flatnonzero(keep)


def fit_operating_points(y: np.ndarray, p: np.ndarray, label_names: Sequence[str], cfg: OperatingPointConfig,
                         mask: np.ndarray | None = None, fit_on: str = "val") -> dict:
    """Per point and label the threshold on the known labels; a label with one known class
    gets 0.5 (no threshold is better justified there)."""
    knobs = cfg.model_dump()
    thresholds = {point: {} for point in cfg.points}
    for j, name in enumerate(label_names):
        yj, pj, _ = _known(y, p, mask, j)
        for point in cfg.points:
            both = len(np.unique(yj)) == 2
            thresholds[point][name] = OPERATING_POINTS.create_from(point, yj, pj, knobs=knobs) if both else 0.5
    return {"fit_on": fit_on, "targets": {"sensitivity": cfg.target_sensitivity,
                                          "specificity": cfg.target_specificity},
            "thresholds": thresholds}


RATE_CELLS = {"sensitivity": ("tp", "fn"), "specificity": ("tn", "fp"), "ppv": ("tp", "fp"), "npv": ("tn", "fn")}


def confusion_cells(y: np.ndarray, positive: np.ndarray) -> dict[str, np.ndarray]:
    """Per row, whether it is a true/false positive/negative (bool arrays ``tp``, ``fp``, ``fn``, ``tn``)."""
    truth, positive = np.asarray(y) == 1, np.asarray(positive, bool)
    return {"tp": positive & truth, "fp": positive & ~truth, "fn": ~positive & truth, "tn": ~positive & ~truth}


def _ratio(hit: int, miss: int) -> float:
    return hit / (hit + miss) if hit + miss else float("nan")


def rates(y: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """Sensitivity, specificity, PPV and NPV of binary decisions (NaN where undefined)."""
    cells = {k: int(v.sum()) for k, v in confusion_cells(y, positive).items()}
    return {rate: _ratio(cells[a], cells[b]) for rate, (a, b) in RATE_CELLS.items()}


def operating_point_table(y: np.ndarray, p: np.ndarray, label_names: Sequence[str], points: dict,
                          groups: Sequence, mask: np.ndarray | None = None, cfg: OperatingPointConfig =
                          OperatingPointConfig()) -> pd.DataFrame:
    """One row per point and label: threshold, n, n_positive, and each rate with its
    ``<rate>_low``/``<rate>_high`` patient-level bootstrap interval."""
    groups = np.asarray(list(groups), dtype=object)
    rows = []
    for point, by_label in points["thresholds"].items():
        for j, name in enumerate(label_names):
            yj, pj, keep = _known(y, p, mask, j)
            if not len(yj):
                continue
            t = by_label[name]
            cells = confusion_cells(yj, pj >= t)
            stats = {rate: (lambda rows, a=a, b=b: _ratio(int(cells[a][rows].sum()), int(cells[b][rows].sum())))
                     for rate, (a, b) in RATE_CELLS.items()}
            intervals = bootstrap_intervals(stats, groups[keep], cfg.n_bootstrap, cfg.confidence, cfg.seed)
            row = {"operating_point": point, "label": name, "threshold": t, "n": len(yj), "n_positive": int(yj.sum())}
            for rate, (value, low, high) in intervals.items():
                row |= {rate: value, f"{rate}_low": low, f"{rate}_high": high}
            rows.append(row)
    return pd.DataFrame(rows)


def check_point(points: dict, point: str) -> None:
    """Raise a ValueError unless ``points`` (a model's operating points) holds ``point``."""
    if not points:
        raise ValueError("this model carries no operating points (it was registered before they were fitted)")
    if point not in points["thresholds"]:
        raise ValueError(f"unknown operating point {point!r}; this model has {sorted(points['thresholds'])}")


def positive_columns(predictions: pd.DataFrame, points: dict, point: str, label_names: Sequence[str]) -> pd.DataFrame:
    """``predictions`` with ``<label>_positive`` (True/False, missing where the score is) at ``point``."""
    check_point(points, point)
    out = predictions.copy()
    for name in label_names:
        score = out[name]
        out[f"{name}_positive"] = (score >= points["thresholds"][point][name]).astype("boolean").mask(score.isna())
    return out


def point_tags(points: dict) -> dict[str, str]:
    """Registry tags ``operating_point.<point>.<label>`` = threshold (empty without points)."""
    return {f"operating_point.{point}.{label}": f"{t:.6f}" for point, by_label in points.get("thresholds", {}).items()
            for label, t in by_label.items()}
