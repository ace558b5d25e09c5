"""Calibration errors: ECE over equal-width bins and over equal-mass bins, MCE and the Brier
score, per label and before/after a calibrator (torchmetrics and scikit-learn underneath)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import brier_score_loss
from torchmetrics.functional.classification import binary_calibration_error

from cxr.metrics.calibration import known_column


def adaptive_ece(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> float:
    """ECE over equal-mass bins (Nixon et al. 2019): every bin holds about N / n_bins scores, so
    sparse high-confidence regions are not averaged away. torchmetrics has equal-width bins only."""
    order = np.argsort(p, kind="stable")
    bins = [b for b in np.array_split(order, min(n_bins, len(p))) if len(b)]
    return float(sum(len(b) * abs(y[b].mean() - p[b].mean()) for b in bins) / len(p))


def calibration_errors(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """ECE (equal-width bins), adaptive ECE (equal-mass), MCE (the worst equal-width bin) and
    the Brier score of binary labels ``y`` against scores ``p``."""
    preds, target = torch.as_tensor(p, dtype=torch.float64), torch.as_tensor(y > 0.5, dtype=torch.long)
    return {"ece": float(binary_calibration_error(preds, target, n_bins=n_bins, norm="l1")),
            "adaptive_ece": adaptive_ece((y > 0.5).astype(np.float64), np.asarray(p, np.float64), n_bins),
            "mce": float(binary_calibration_error(preds, target, n_bins=n_bins, norm="max")),
            "brier": float(brier_score_loss((y > 0.5).astype(int), p))}


def calibration_table(y: np.ndarray, probs: dict[str, np.ndarray], label_names: Sequence[str],
                      mask: np.ndarray | None = None, n_bins: int = 15) -> pd.DataFrame:
    """One row per label and per entry of ``probs`` (e.g. ``before``/``after``) with n, ECE,
    adaptive ECE, MCE and Brier, plus a ``mean`` row per entry over the labels with known values."""
    rows = []
    for stage, p in probs.items():
        stage_rows = []
        for j, name in enumerate(label_names):
            yj, pj = known_column(y, p, mask, j)
            if len(yj):
                stage_rows.append({"stage": stage, "label": name, "n": len(yj)} | calibration_errors(yj, pj, n_bins))
        rows += stage_rows
        if stage_rows:
            frame = pd.DataFrame(stage_rows)
            rows.append({"stage": stage, "label": "mean", "n": int(frame["n"].sum())}
                        | frame[["ece", "adaptive_ece", "mce", "brier"]].mean().to_dict())
    return pd.DataFrame(rows)


def summary_errors(table: pd.DataFrame) -> dict[str, float]:
    """``<stage>_<error>`` of the table's ``mean`` rows, flat for MLflow."""
    means = table[table["label"] == "mean"]
    return {f"{row.stage}_{k}": float(getattr(row, k)) for row in means.itertuples()
            for k in ("ece", "adaptive_ece", "mce", "brier")}
