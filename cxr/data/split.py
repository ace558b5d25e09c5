"""Seeded, stratified, patient-level train/val split.

All images of one patient land on the same side (scikit-learn's StratifiedGroupKFold), so
validation does not see patients it trained on, which otherwise flatters val AUC.
"""

from __future__ import annotations

import warnings

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.model_selection import StratifiedGroupKFold

from cxr.data.imageset import ImageSet
from cxr.errors import DataError


class SplitConfig(BaseModel):
    """``parameters.split`` in YAML."""

    model_config = ConfigDict(extra="forbid")

    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    seed: int = 0


def label_groups(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-image stratum: index of its rarest known positive label, -1 if none is positive."""
    known_pos = (labels > 0.5) & mask
    prevalence = known_pos.sum(0) / np.maximum(mask.sum(0), 1)
    rank = np.where(known_pos, prevalence[None, :], np.inf)
    return np.where(known_pos.any(1), rank.argmin(1), -1) if labels.shape[1] else np.full(len(labels), -1)


def check_val_classes(val: ImageSet) -> None:
    """Raise if no val label holds both known classes (no AUC could be computed); warn, naming
    them, about labels that hold one class (their AUC is undefined and left out of the mean)."""
    single = [f"{name!r} ({int(val.mask[:, j].sum())} known)" for j, name in enumerate(val.label_names)
              if len(np.unique(val.labels[val.mask[:, j], j] > 0.5)) < 2]
    if single and len(single) == len(val.label_names):
        raise DataError(f"the validation split has a single class for label {', '.join(single)}: AUC is "
                        "undefined; use a larger val_fraction or more data")
    if single:
        warnings.warn(f"the validation split has a single class for label {', '.join(single)}: its AUC is "
                      "undefined and left out of mean AUC", stacklevel=2)


def split_train_val(imageset: ImageSet, cfg: SplitConfig) -> ImageSet:
    """Mark each row's ``split`` as 'train' or 'val', patients never on both sides."""
    if len(imageset) == 0:
        raise DataError("cannot split an empty image set")
    groups = imageset.manifest["patient_id"].to_numpy()
    n_patients = len(np.unique(groups))
    n_splits = max(2, int(round(1 / cfg.val_fraction)))
    if n_patients < n_splits:
        raise DataError(f"{n_patients} patients are too few for a {cfg.val_fraction:.0%} val split "
                        f"({n_splits} folds need at least {n_splits} patients)")
    strata = label_groups(imageset.labels, imageset.mask)
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=cfg.seed)
    train_idx, val_idx = next(folds.split(np.zeros(len(strata)), strata, groups))
    manifest = imageset.manifest.copy()
    manifest["split"] = "train"
    manifest.loc[val_idx, "split"] = "val"
    out = ImageSet(manifest, imageset.label_names, imageset.labels, imageset.mask,
                   imageset.images, imageset.skipped)
    for name in ("train", "val"):
        if (manifest["split"] == name).sum() == 0:
            raise DataError(f"the {name} split is empty")
    check_val_classes(out.split("val"))
    return out
