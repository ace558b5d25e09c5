"""Per-label classification metrics over known labels only (scikit-learn underneath).

A label whose known values hold one class only has no AUC; it is reported as NaN and left
out of the means rather than silently scored.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (average_precision_score, cohen_kappa_score, confusion_matrix,
                             f1_score, precision_recall_curve, roc_auc_score)


def _known(y: np.ndarray, p: np.ndarray, mask: np.ndarray | None, j: int) -> tuple[np.ndarray, np.ndarray]:
    keep = slice(None) if mask is None else mask[:, j]
    return (y[keep, j] > 0.5).astype(int), p[keep, j]


def per_label_auc(y: np.ndarray, p: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """ROC AUC per label over known labels; NaN where only one class is known."""
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        yj, pj = _known(y, p, mask, j)
        if len(np.unique(yj)) == 2:
            out[j] = roc_auc_score(yj, pj)
    return out


def mean_auc(y: np.ndarray, p: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean ROC AUC over the labels that have one; NaN if none does."""
    aucs = per_label_auc(y, p, mask)
    return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")


def best_f1_threshold(y: np.ndarray, p: np.ndarray, low: float = 0.01, high: float = 0.99) -> float:
    """The probability threshold in [low, high] that maximises F1 (from the PR curve)."""
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision[:-1] * recall[:-1] / np.clip(precision[:-1] + recall[:-1], 1e-12, None)
    inside = (thresholds >= low) & (thresholds <= high)
    if not inside.any():
        return float(np.clip(0.5, low, high))
    best = np.argmax(np.where(inside, f1, -1.0))
    return float(thresholds[best])


def label_report(y: np.ndarray, p: np.ndarray, label_names: list[str], mask: np.ndarray | None = None,
                 thresholds: np.ndarray | None = None,
                 search_range: tuple[float, float] = (0.01, 0.99)) -> pd.DataFrame:
    """One row per label: AUC, AP, F1/kappa/confusion counts at the tuned (or given) threshold.

    Thresholds are tuned for F1 within ``search_range`` unless ``thresholds`` is given.
    """
    rows = []
    for j, name in enumerate(label_names):
        yj, pj = _known(y, p, mask, j)
        both = len(np.unique(yj)) == 2
        t = float(thresholds[j]) if thresholds is not None else (best_f1_threshold(yj, pj, *search_range) if both else 0.5)
        pred = (pj >= t).astype(int)
        tn, fp, fn, tp = confusion_matrix(yj, pred, labels=[0, 1]).ravel()
        rows.append({
            "label": name, "n_known": len(yj), "n_positive": int(yj.sum()),
            "auc": roc_auc_score(yj, pj) if both else np.nan,
            "average_precision": average_precision_score(yj, pj) if both else np.nan,
            "threshold": t, "f1": f1_score(yj, pred, zero_division=0.0),
            "kappa": cohen_kappa_score(yj, pred) if both else np.nan,
            "sensitivity": tp / max(tp + fn, 1), "specificity": tn / max(tn + fp, 1),
            "tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp),
        })
    return pd.DataFrame(rows)


def summary_metrics(report: pd.DataFrame) -> dict[str, float]:
    """Mean AUC/AP/F1/kappa over labels, min/median/max AUC and the per-label AUCs, as flat
    floats for MLflow."""
    out = {f"mean_{k}": float(report[k].mean()) for k in ("auc", "average_precision", "f1", "kappa")}
    out.update({f"{stat}_auc": float(getattr(report["auc"], stat)()) for stat in ("min", "median", "max")})
    out.update({f"auc_{row.label}": float(row.auc) for row in report.itertuples()})
    return out
