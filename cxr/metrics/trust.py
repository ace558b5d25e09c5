"""What a model's outputs mean on each labelled set: the checkpoint gains its calibration and
operating points (fitted on one split), and a report gives, per set, calibration errors before
and after, every operating point's rates, headline metrics with patient-level bootstrap
intervals, and the subgroup table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from cxr.data.imageset import ImageSet
from cxr.metrics.calibration import CalibrationConfig, apply_calibration, fit_calibration, known_column
from cxr.metrics.calibration_error import calibration_errors, calibration_table
from cxr.metrics.classification import mean_auc
from cxr.metrics.generalisation import part_labels
from cxr.metrics.operating_points import OperatingPointConfig, fit_operating_points, operating_point_table
from cxr.metrics.subgroups import subgroup_table, too_small_warnings
from cxr.metrics.uncertainty import bootstrap_intervals, interval_frame
from cxr.models.checkpoint import Checkpoint


@dataclass
class TrustReport:
    """Per-set tables, each with a leading ``set`` column, and the warnings worth a reader's eye."""

    calibration: pd.DataFrame
    operating_points: pd.DataFrame
    intervals: pd.DataFrame
    subgroups: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


def calibrated_checkpoint(checkpoint: Checkpoint, part: ImageSet, raw: np.ndarray,
                          calibration: CalibrationConfig | None, points: OperatingPointConfig,
                          fit_on: str = "val") -> Checkpoint:
    """``checkpoint`` whose metadata gains the calibration fitted on ``part``'s uncalibrated
    probabilities ``raw`` (none when ``calibration`` is None) and the operating points fitted on
    the calibrated ones; the weights are unchanged."""
    labels = list(checkpoint.meta.label_names)
    y, mask = part_labels(part, labels)
    fitted = fit_calibration(y, raw, labels, calibration.method, mask, fit_on) if calibration else {}
    thresholds = fit_operating_points(y, apply_calibration(raw, fitted, labels), labels, points, mask, fit_on)
    meta = checkpoint.meta.model_copy(update={"calibration": fitted, "operating_points": thresholds})
    return Checkpoint(checkpoint.state_dict, meta)


def _mean_over_labels(score, y: np.ndarray, p: np.ndarray, mask: np.ndarray, rows: np.ndarray,
                      both_classes: bool = True) -> float:
    """Mean of ``score`` over labels with known values in ``rows`` (with both classes, for
    ranking metrics; ECE and Brier are defined on one class too, as in the calibration table)."""
    values = []
    for j in range(y.shape[1]):
        yj, pj = known_column(y[rows], p[rows], mask[rows], j)
        if len(np.unique(yj)) == 2 or (not both_classes and len(yj)):
            values.append(score(yj, pj))
    return float(np.mean(values)) if values else float("nan")


def headline_intervals(y: np.ndarray, p: np.ndarray, mask: np.ndarray, groups, cfg: OperatingPointConfig,
                       n_bins: int = 15) -> pd.DataFrame:
    """Mean AUC, mean average precision, mean ECE and mean Brier over labels, each with its
    patient-level bootstrap interval."""
    statistics = {
        "mean_auc": lambda rows: mean_auc(y[rows], p[rows], mask[rows]),
        "mean_average_precision": lambda rows: _mean_over_labels(average_precision_score, y, p, mask, rows),
        "mean_ece": lambda rows: _mean_over_labels(lambda a, b: calibration_errors(a, b, n_bins)["ece"], y, p, mask,
                                                   rows, both_classes=False),
        "mean_brier": lambda rows: _mean_over_labels(lambda a, b: float(np.mean((b - a) ** 2)), y, p, mask, rows,
                                                     both_classes=False),
    }
    return interval_frame(bootstrap_intervals(statistics, list(groups), cfg.n_bootstrap, cfg.confidence, cfg.seed))


def trust_report(checkpoint: Checkpoint, sets: Mapping[str, tuple[ImageSet, np.ndarray]],
                 points: OperatingPointConfig, n_bins: int = 15, min_subgroup: int = 10) -> TrustReport:
    """The report of a calibrated ``checkpoint`` on each named labelled set, given that set's
    uncalibrated probabilities (so that before and after come from the same forward pass)."""
    labels = list(checkpoint.meta.label_names)
    tables: dict[str, list[pd.DataFrame]] = {"calibration": [], "operating_points": [], "intervals": [],
                                             "subgroups": []}
    warnings: list[str] = []
    for name, (part, raw) in sets.items():
        y, mask = part_labels(part, labels)
        after = apply_calibration(raw, checkpoint.meta.calibration, labels)
        groups = part.manifest["patient_id"].tolist()
        report_point = checkpoint.meta.operating_points["thresholds"][points.report]
        parts = {"calibration": calibration_table(y, {"before": raw, "after": after}, labels, mask, n_bins),
                 "operating_points": operating_point_table(y, after, labels, checkpoint.meta.operating_points,
                                                           groups, mask, points),
                 "intervals": headline_intervals(y, after, mask, groups, points, n_bins),
                 "subgroups": subgroup_table(part.manifest, y, after, labels, report_point, mask, min_subgroup)}
        for key, table in parts.items():
            tables[key].append(table.assign(set=name)[["set", *table.columns]])
        warnings += [f"{name}: {line}" for line in too_small_warnings(parts["subgroups"], min_subgroup)]
    return TrustReport(**{key: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
                          for key, frames in tables.items()}, warnings=warnings)


def trust_metrics(report: TrustReport) -> dict[str, float]:
    """Flat MLflow metrics: ``trust/<set>_<before|after>_<error>`` and ``trust/<set>_<metric>[_low|_high]``."""
    out = {}
    means = report.calibration[report.calibration["label"] == "mean"]
    for row in means.itertuples():
        out |= {f"trust/{row.set}_{row.stage}_{k}": float(getattr(row, k))
                for k in ("ece", "adaptive_ece", "mce", "brier")}
    for row in report.intervals.itertuples():
        key = f"trust/{row.set}_{row.metric}"
        out |= {key: row.value, f"{key}_low": row.low, f"{key}_high": row.high}
    return {k: float(v) for k, v in out.items()}


def pooled_curves(checkpoint: Checkpoint, sets: Mapping[str, tuple[ImageSet, np.ndarray]],
                  ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per set, the known labels of every label pooled with their scores before and after
    calibration: the points of a reliability diagram."""
    labels = list(checkpoint.meta.label_names)
    curves = {}
    for name, (part, raw) in sets.items():
        y, mask = part_labels(part, labels)
        after = apply_calibration(raw, checkpoint.meta.calibration, labels)
        curves[name] = ((y[mask] > 0.5).astype(int), raw[mask], after[mask])
    return curves
