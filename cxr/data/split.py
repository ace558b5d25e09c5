"""Seeded, stratified, patient-level train/val split, and an optional site-shift proxy.

All images of one patient land on the same side (scikit-learn's StratifiedGroupKFold), so
validation does not see patients it trained on, which otherwise flatters val AUC. A random
patient-level val still comes from the same acquisitions as train; the proxy split holds
out whole groups that behave like another site (``PROXY_SPLITS``), before val is drawn
from the rest, so every run can report val and proxy side by side.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sklearn.model_selection import StratifiedGroupKFold

from cxr.data.imageset import ImageSet, hashed_id
from cxr.errors import DataError
from cxr.registry import Registry

PROXY_SPLITS = Registry("proxy split")
register_proxy_split = PROXY_SPLITS.register
ProxySplitName = PROXY_SPLITS.choice()
SPLIT_NAMES = ("train", "val", "proxy")


ID_ORDER_PATTERN = r"^(?P<family>.*?)(?P<order>\d+)$"


class ProxyConfig(BaseModel):
    """``parameters.split.proxy``: which whole groups stand in for an unseen site."""

    model_config = ConfigDict(extra="forbid")

    method: ProxySplitName = Field("id_order", description="id_order: the highest-numbered patients of each "
                                   "id family (the latest acquisitions); groups: whole groups named by a regex")
    fraction: float = Field(0.15, gt=0, lt=0.5, description="share of each family's (id_order) or of all "
                            "(groups) images held out")
    pattern: str = Field(ID_ORDER_PATTERN, description="id_order: regex over the patient id with groups 'order' "
                         "(digits) and optionally 'family'; groups (required): regex over the image path whose "
                         "group 1 (or whole match) names the group")
    seed: int = Field(0, description="groups: order in which whole groups are drawn")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"split.proxy.pattern {value!r} is not a regular expression: {err}") from None
        return value

    @model_validator(mode="after")
    def _groups_need_a_pattern(self) -> "ProxyConfig":
        if self.method == "groups" and self.pattern == ID_ORDER_PATTERN:
            raise ValueError("split.proxy.method 'groups' needs split.proxy.pattern: a regex over the image path "
                             "naming the group, e.g. '/(site_[a-z]+)/'")
        return self


class SplitConfig(BaseModel):
    """``parameters.split`` in YAML."""

    model_config = ConfigDict(extra="forbid")

    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="share of the non-proxy images in val")
    seed: int = 0
    proxy: ProxyConfig | None = Field(None, description="hold out a site-shift proxy split (None: no proxy)")


def label_groups(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-image stratum: index of its rarest known positive label, -1 if none is positive."""
    known_pos = (labels > 0.5) & mask
    prevalence = known_pos.sum(0) / np.maximum(mask.sum(0), 1)
    rank = np.where(known_pos, prevalence[None, :], np.inf)
    return np.where(known_pos.any(1), rank.argmin(1), -1) if labels.shape[1] else np.full(len(labels), -1)


def check_val_classes(val: ImageSet, name: str = "validation") -> None:
    """Raise if no label of ``val`` holds both known classes (no AUC could be computed); warn,
    naming them, about labels that hold one class (their AUC is undefined and left out of the mean)."""
    single = [f"{label!r} ({int(val.mask[:, j].sum())} known)" for j, label in enumerate(val.label_names)
              if len(np.unique(val.labels[val.mask[:, j], j] > 0.5)) < 2]
    if single and len(single) == len(val.label_names):
        raise DataError(f"the {name} split has a single class for label {', '.join(single)}: AUC is "
                        "undefined; use a larger fraction or more data")
    if single:
        warnings.warn(f"the {name} split has a single class for label {', '.join(single)}: its AUC is "
                      "undefined and left out of mean AUC", stacklevel=2)


def patient_orders(patient_ids: pd.Series, pattern: str) -> pd.DataFrame:
    """Per unique patient id: its ``family`` and integer ``order`` read by ``pattern``."""
    regex, rows, unmatched = re.compile(pattern), [], []
    for patient in patient_ids.unique():
        match = regex.search(str(patient))
        if match is None or match.groupdict().get("order") is None:
            unmatched.append(hashed_id(patient))
            continue
        rows.append((patient, match.groupdict().get("family") or "", int(match.group("order"))))
    if unmatched:
        raise DataError(f"split.proxy.pattern {pattern!r} finds no 'order' digits in {len(unmatched)} patient "
                        f"id(s) (hashed: {unmatched[:3]}); give a pattern with a (?P<order>\\d+) group")
    return pd.DataFrame(rows, columns=["patient_id", "family", "order"])


def take_until(sizes: pd.Series, share: float) -> list:
    """The leading keys of ``sizes`` (in its order) whose running total first reaches ``share`` of its sum."""
    before = sizes.cumsum() - sizes
    return sizes.index[before < share * sizes.sum()].tolist()


@register_proxy_split("id_order")
def id_order_proxy(manifest: pd.DataFrame, cfg: ProxyConfig) -> set[str]:
    """Patients held out: within each id family, the highest-numbered ones (a temporal holdout
    where ids are issued in order) until they hold ``cfg.fraction`` of the family's images."""
    orders = patient_orders(manifest["patient_id"], cfg.pattern)
    images = manifest["patient_id"].value_counts()
    held = []
    for _, family in orders.sort_values("order", ascending=False).groupby("family", sort=False):
        if len(family) >= round(1 / cfg.fraction):  # a family too small to share stays in train
            held += take_until(images[family["patient_id"]], cfg.fraction)
    return set(held)


def path_groups(manifest: pd.DataFrame, pattern: str) -> pd.Series:
    """Per patient, the group its image paths name most often (group 1 of ``pattern``, or the match)."""
    regex = re.compile(pattern)

    def group(row: int, path: str) -> str:
        match = regex.search(path)
        if match is None:
            raise DataError(f"split.proxy.pattern {pattern!r} does not match the image path of row {row}")
        return match.group(1) if match.groups() else match.group(0)

    named = manifest.assign(group=[group(row, path) for row, path in enumerate(manifest["path"])])
    return named.groupby("patient_id")["group"].agg(lambda g: g.value_counts().index[0])


@register_proxy_split("groups")
def group_proxy(manifest: pd.DataFrame, cfg: ProxyConfig) -> set[str]:
    """Patients held out: those of path-named groups (e.g. a site folder; a patient counts in
    the group most of its images name), drawn in seeded random order, skipping any that would
    hold out more than twice ``cfg.fraction`` of the images, until ``cfg.fraction`` is reached."""
    groups = path_groups(manifest, cfg.pattern)
    if groups.nunique() < 2:
        raise DataError(f"split.proxy.pattern {cfg.pattern!r} names one group only: nothing to hold out")
    sizes = manifest["patient_id"].map(groups).value_counts()
    held, total = [], 0
    for name in np.random.default_rng(cfg.seed).permutation(sorted(sizes.index)):
        if total < cfg.fraction * len(manifest) and total + sizes[name] <= 2 * cfg.fraction * len(manifest):
            held, total = held + [name], total + sizes[name]
    if not held:
        raise DataError(f"every group split.proxy.pattern names holds more than {2 * cfg.fraction:.0%} of the "
                        "images: raise split.proxy.fraction or name smaller groups")
    return set(groups.index[groups.isin(held)])


def proxy_rows(imageset: ImageSet, cfg: ProxyConfig) -> np.ndarray:
    """Boolean mask of the rows in the proxy split (whole patients, whole groups)."""
    held = PROXY_SPLITS.get(cfg.method)(imageset.manifest, cfg)
    rows = imageset.manifest["patient_id"].isin(held).to_numpy()
    if rows.all() or not rows.any():
        raise DataError(f"split.proxy ({cfg.method}) holds out {int(rows.sum())} of {len(rows)} images: "
                        "nothing would be left to train on or to hold out")
    return rows


def split_train_val(imageset: ImageSet, cfg: SplitConfig) -> ImageSet:
    """Mark each row's ``split`` as 'train', 'val' or (with ``cfg.proxy``) 'proxy', patients
    never on two sides. The proxy is drawn first, val from the rest."""
    if len(imageset) == 0:
        raise DataError("cannot split an empty image set")
    held = proxy_rows(imageset, cfg.proxy) if cfg.proxy is not None else np.zeros(len(imageset), bool)
    rest = np.flatnonzero(~held)
    split = np.full(len(imageset), "proxy", dtype=object)
    split[rest] = val_split(imageset.subset(rest), cfg)
    manifest = imageset.manifest.assign(split=split)
    out = ImageSet(manifest, imageset.label_names, imageset.labels, imageset.mask,
                   imageset.images, imageset.skipped)
    for name in ("train", "val"):
        if (manifest["split"] == name).sum() == 0:
            raise DataError(f"the {name} split is empty")
    check_val_classes(out.split("val"))
    if held.any():
        check_val_classes(out.split("proxy"), "proxy")
    return out


def val_split(imageset: ImageSet, cfg: SplitConfig) -> np.ndarray:
    """'train' or 'val' per row, stratified by label and grouped by patient."""
    groups = imageset.manifest["patient_id"].to_numpy()
    n_patients = len(np.unique(groups))
    n_splits = max(2, int(round(1 / cfg.val_fraction)))
    if n_patients < n_splits:
        raise DataError(f"{n_patients} patients are too few for a {cfg.val_fraction:.0%} val split "
                        f"({n_splits} folds need at least {n_splits} patients)")
    strata = label_groups(imageset.labels, imageset.mask)
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=cfg.seed)
    _, val_idx = next(folds.split(np.zeros(len(strata)), strata, groups))
    split = np.full(len(imageset), "train", dtype=object)
    split[val_idx] = "val"
    return split
