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
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import nnls
from scipy.stats import rankdata
from sklearn.model_selection import GroupKFold

from cxr.metrics.classification import mean_auc
from cxr.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cxr.registry import Registry

ENSEMBLE_FILE = "ensemble.json"
WEIGHTINGS = Registry("ensemble weighting")
register_weighting = WEIGHTINGS.register
WeightingName = WEIGHTINGS.choice()


class EnsembleConfig(BaseModel):
    """Which members to keep and how to weight them (``parameters.ensemble`` in YAML)."""

    model_config = ConfigDict(extra="forbid")

    auc_floor: float = Field(0.5, ge=0, le=1, description="drop members whose val mean AUC is below this")
    max_gap: float = Field(0.05, ge=0, description="drop members more than this behind the best val AUC")
    weighting: WeightingName = Field(
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


class Weighting(ABC):
    """How kept members are weighted; ``rank`` combines rank-transformed predictions instead."""

    rank = False

    @abstractmethod
    def weights(self, val_preds: list[np.ndarray], y: np.ndarray, mask: np.ndarray, auc: np.ndarray) -> np.ndarray:
        """(M, L) weights from the members' val predictions and their (M,) val mean AUCs."""


def per_member(base: np.ndarray, n_labels: int) -> np.ndarray:
    """(M, L) weights: ``base`` (M,) normalised to sum 1, the same for every label."""
    return np.repeat((base / base.sum())[:, None], n_labels, axis=1)


@register_weighting("auc")
class AUCWeighting(Weighting):
    """Weights proportional to val mean AUC (the challenge solution's rule)."""

    def weights(self, val_preds: list[np.ndarray], y: np.ndarray, mask: np.ndarray, auc: np.ndarray) -> np.ndarray:
        return per_member(auc, y.shape[1])


@register_weighting("equal")
class EqualWeighting(Weighting):
    """A plain mean."""

    def weights(self, val_preds: list[np.ndarray], y: np.ndarray, mask: np.ndarray, auc: np.ndarray) -> np.ndarray:
        return per_member(np.ones(len(val_preds)), y.shape[1])


@register_weighting("rank")
class RankWeighting(AUCWeighting):
    """AUC-weighted average of per-label ranks: aligns members whose probabilities differ in scale."""

    rank = True


@register_weighting("stack")
class StackWeighting(Weighting):
    """Non-negative least squares per label on val predictions."""

    def weights(self, val_preds: list[np.ndarray], y: np.ndarray, mask: np.ndarray, auc: np.ndarray) -> np.ndarray:
        return stack_weights(val_preds, y, mask)


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
    weighting = WEIGHTINGS.create(cfg.weighting)
    weights = weighting.weights([val_preds[m] for m in kept], y, mask, np.array([member_auc[m] for m in kept]))
    return Ensemble(kept, weights, weighting.rank, member_auc, dropped)


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


def ensemble_report(val_preds: dict[str, np.ndarray], y: np.ndarray, mask: np.ndarray, groups: np.ndarray,
                    cfg: EnsembleConfig = EnsembleConfig()) -> tuple[Ensemble, pd.DataFrame]:
    """The ensemble fitted on all of val, and a report: each member's val AUC, its weight (mean
    over labels) or why it was dropped, then the ensemble's in-sample and 2-fold cross-fitted
    (by patient ``groups``) val AUC."""
    ensemble = fit_ensemble(val_preds, y, mask, cfg)
    weight = dict(zip(ensemble.members, ensemble.weights.mean(axis=1)))
    rows = [{"member": n, "val_auc": ensemble.member_auc[n], "weight": weight.get(n, 0.0),
             "dropped": ensemble.dropped.get(n, "")} for n in val_preds]
    rows += [{"member": "ensemble", "val_auc": mean_auc(y, ensemble.combine(val_preds), mask)},
             {"member": "ensemble_cross_fit",
              "val_auc": mean_auc(y, cross_fit_predictions(val_preds, y, mask, groups, cfg), mask)}]
    return ensemble, pd.DataFrame(rows).fillna({"weight": 1.0, "dropped": ""})


@dataclass
class EnsembleModel:
    """The kept members' checkpoints and their (M, L) weights: a servable ensemble.

    Rank averages are refused: a rank depends on the other images scored with it, so one
    image sent alone would get a meaningless score.
    """

    members: dict[str, Checkpoint]
    weights: np.ndarray
    weighting: str = "auc"
    operating_points: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if WEIGHTINGS.create(self.weighting).rank:
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
                                                    "weighting": model.weighting, "label_names": model.label_names,
                                                    "operating_points": model.operating_points},
                                                   indent=2))
    return folder


def load_ensemble_model(folder: str | Path) -> EnsembleModel:
    """Read what ``save_ensemble_model`` wrote."""
    folder = Path(folder)
    if not (folder / ENSEMBLE_FILE).is_file():
        raise FileNotFoundError(f"ensemble folder {folder} lacks {ENSEMBLE_FILE}")
    spec = json.loads((folder / ENSEMBLE_FILE).read_text())
    members = {name: load_checkpoint(folder / "members" / name) for name in spec["members"]}
    return EnsembleModel(members, np.asarray(spec["weights"], dtype=np.float64), spec["weighting"],
                         spec.get("operating_points", {}))
