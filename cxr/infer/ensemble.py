"""AUC-weighted ensembles of several trained models' predictions.

Members below an AUC floor, or too far behind the best member, are dropped; the rest are
averaged with weights from their val AUC (the challenge solution's rule), equal weights, a
rank average, or a non-negative least-squares stacker fitted per label on val predictions.
Everything is fitted on val predictions only; ``cross_fit_predictions`` scores the recipe on
val rows it was not fitted on. ``EnsembleModel`` is a fitted ensemble with its members'
checkpoints: what the registry serves and promotes like a single model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import nnls
from scipy.stats import rankdata
from sklearn.model_selection import GroupKFold

from cxr.metrics.classification import mean_auc
from cxr.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

ENSEMBLE_FILE = "ensemble.json"


class EnsembleConfig(BaseModel):
    """Which members to keep and how to weight them (``parameters.ensemble`` in YAML)."""

    model_config = ConfigDict(extra="forbid")

    auc_floor: float = Field(0.5, ge=0, le=1, description="drop members whose val mean AUC is below this")
    max_gap: float = Field(0.05, ge=0, description="drop members more than this behind the best val AUC")
    weighting: Literal["auc", "equal", "rank", "stack"] = Field(
        "auc", description="auc: weights proportional to val AUC; rank: AUC-weighted rank average; "
                           "stack: non-negative least squares per label on val predictions")


@dataclass
class Ensemble:
    """Kept members with their (M, L) weights, and why the others were dropped."""

    members: list[str]
    weights: np.ndarray
    rank: bool
    member_auc: dict[str, float]
    dropped: dict[str, str] = field(default_factory=dict)

    def combine(self, predictions: dict[str, np.ndarray]) -> np.ndarray:
        """(N, L) weighted average of the kept members' (N, L) probabilities."""
        return weighted_average([to_ranks(predictions[m]) if self.rank else predictions[m] for m in self.members],
                                self.weights)


def weighted_average(predictions: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """(N, L) average of M (N, L) predictions with per-label (M, L) weights."""
    return np.einsum("mnl,ml->nl", np.stack(predictions), weights)


def to_ranks(probs: np.ndarray) -> np.ndarray:
    """Each column's values as ranks scaled to (0, 1]; AUC is unchanged, scales are aligned."""
    return rankdata(probs, axis=0) / len(probs)


def select_members(member_auc: dict[str, float], cfg: EnsembleConfig) -> tuple[list[str], dict[str, str]]:
    """(kept members in input order, dropped member -> reason)."""
    best = max(member_auc.values())
    dropped = {}
    for name, auc in member_auc.items():
        if auc < cfg.auc_floor:
            dropped[name] = f"val AUC {auc:.4f} below the floor {cfg.auc_floor}"
        elif best - auc > cfg.max_gap:
            dropped[name] = f"val AUC {auc:.4f} is {best - auc:.4f} behind the best ({best:.4f}) > {cfg.max_gap}"
    return [n for n in member_auc if n not in dropped], dropped


def stack_weights(val_preds: list[np.ndarray], y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(M, L) non-negative least-squares weights per label on known val rows, normalised to sum 1."""
    weights = np.zeros((len(val_preds), y.shape[1]))
    for j in range(y.shape[1]):
        known = mask[:, j]
        design = np.stack([p[known, j] for p in val_preds], axis=1)
        w, _ = nnls(design, y[known, j].astype(np.float64))
        weights[:, j] = w / w.sum() if w.sum() > 0 else 1.0 / len(val_preds)
    return weights


def fit_ensemble(val_preds: dict[str, np.ndarray], y: np.ndarray, mask: np.ndarray,
                 cfg: EnsembleConfig = EnsembleConfig()) -> Ensemble:
    """Score each member on val, drop the weak ones, and weight the rest per ``cfg.weighting``."""
    if not val_preds:
        raise ValueError("an ensemble needs at least one member")
    member_auc = {name: mean_auc(y, p, mask) for name, p in val_preds.items()}
    kept, dropped = select_members(member_auc, cfg)
    n_labels = y.shape[1]
    if cfg.weighting == "stack":
        weights = stack_weights([val_preds[m] for m in kept], y, mask)
    else:
        base = np.ones(len(kept)) if cfg.weighting == "equal" else np.array([member_auc[m] for m in kept])
        weights = np.repeat((base / base.sum())[:, None], n_labels, axis=1)
    return Ensemble(kept, weights, cfg.weighting == "rank", member_auc, dropped)


def cross_fit_predictions(val_preds: dict[str, np.ndarray], y: np.ndarray, mask: np.ndarray, groups: np.ndarray,
                          cfg: EnsembleConfig = EnsembleConfig(), folds: int = 2) -> np.ndarray:
    """(N, L) out-of-fold ensemble predictions on val: each patient group is combined by a
    selection and weights fitted on the other folds, so scoring them does not reward fitting
    val (which a stacker can, and an in-sample ensemble AUC hides)."""
    out = np.empty(y.shape, dtype=np.float64)
    for fit_rows, held_rows in GroupKFold(n_splits=folds).split(y, groups=groups):
        ensemble = fit_ensemble({n: p[fit_rows] for n, p in val_preds.items()}, y[fit_rows], mask[fit_rows], cfg)
        out[held_rows] = ensemble.combine({n: p[held_rows] for n, p in val_preds.items()})
    return out


@dataclass
class EnsembleModel:
    """The kept members' checkpoints and their (M, L) weights: a servable ensemble.

    Rank averages are refused: a rank depends on the other images scored with it, so one
    image sent alone would get a meaningless score.
    """

    members: dict[str, Checkpoint]
    weights: np.ndarray
    weighting: str = "auc"

    def __post_init__(self) -> None:
        if self.weighting == "rank":
            raise ValueError("a rank-averaged ensemble cannot be served (one image alone has no rank); "
                             "register an auc, equal or stack ensemble")
        labels = {tuple(c.meta.label_names) for c in self.members.values()}
        if len(labels) != 1:
            raise ValueError(f"ensemble members disagree on their labels: {sorted(labels)}")
        if self.weights.shape != (len(self.members), len(self.label_names)):
            raise ValueError(f"ensemble weights {self.weights.shape} do not match {len(self.members)} members "
                             f"x {len(self.label_names)} labels")

    @property
    def label_names(self) -> list[str]:
        return list(next(iter(self.members.values())).meta.label_names)

    def combine(self, predictions: list[np.ndarray]) -> np.ndarray:
        """(N, L) weighted average of the members' (N, L) probabilities, in member order."""
        return weighted_average(predictions, self.weights)


def save_ensemble_model(model: EnsembleModel, folder: str | Path) -> Path:
    """``ensemble.json`` (member order, weights, labels) plus one checkpoint folder per member."""
    folder = Path(folder)
    for name, checkpoint in model.members.items():
        save_checkpoint(checkpoint, folder / "members" / name)
    (folder / ENSEMBLE_FILE).write_text(json.dumps({"members": list(model.members), "weights": model.weights.tolist(),
                                                    "weighting": model.weighting, "label_names": model.label_names},
                                                   indent=2))
    return folder


def load_ensemble_model(folder: str | Path) -> EnsembleModel:
    """Read what ``save_ensemble_model`` wrote."""
    folder = Path(folder)
    if not (folder / ENSEMBLE_FILE).is_file():
        raise FileNotFoundError(f"ensemble folder {folder} lacks {ENSEMBLE_FILE}")
    spec = json.loads((folder / ENSEMBLE_FILE).read_text())
    members = {name: load_checkpoint(folder / "members" / name) for name in spec["members"]}
    return EnsembleModel(members, np.asarray(spec["weights"], dtype=np.float64), spec["weighting"])
