"""Val against the sets a model was not tuned on: thresholds fitted on one named split and
applied to every set, the same per-label table for each, and the per-label gap to val.

A random patient-level val comes from the same acquisitions as train and flatters every
figure; the proxy split and labelled external sets show how much of it carries over.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from cxr.data.imageset import ImageSet
from cxr.errors import ConfigError, DataError, did_you_mean
from cxr.metrics.classification import label_report, summary_metrics


class ThresholdConfig(BaseModel):
    """``parameters.thresholds``: where the per-label F1 thresholds are fitted."""

    model_config = ConfigDict(extra="forbid")

    fit_on: str = Field("val", pattern="^(val|proxy)$", description="split the thresholds are tuned on: val, "
                        "or proxy (needs split.proxy)")
    search_min: float = Field(0.01, gt=0, lt=1)
    search_max: float = Field(0.99, gt=0, lt=1)


def scored_part(part: ImageSet, predictions: pd.DataFrame, label_names: list[str], name: str) -> np.ndarray:
    """(N, L) probabilities of ``predictions`` for ``part``'s rows, checked to be the same images
    in the same order and to carry every label the model predicts."""
    if list(predictions["id"]) != part.ids:
        raise ValueError(f"the {name} predictions' rows do not match the {name} images")
    missing = [label for label in label_names if label not in part.label_names]
    if missing:
        raise DataError(f"the {name} set has no labels {missing} that the model predicts "
                        f"(it has {list(part.label_names)})")
    return predictions[label_names].to_numpy()


def part_labels(part: ImageSet, label_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``part``'s labels and mask in the model's label order."""
    columns = [part.label_names.index(label) for label in label_names]
    return part.labels[:, columns], part.mask[:, columns]


def fitted_thresholds(part: ImageSet, probs: np.ndarray, label_names: list[str], cfg: ThresholdConfig) -> np.ndarray:
    """Per-label F1 thresholds tuned on ``part`` within the configured search range."""
    y, mask = part_labels(part, label_names)
    return label_report(y, probs, label_names, mask, search_range=(cfg.search_min, cfg.search_max))[
        "threshold"].to_numpy()


def part_report(part: ImageSet, probs: np.ndarray, label_names: list[str],
                thresholds: np.ndarray) -> tuple[pd.DataFrame, dict[str, float]]:
    """The per-label table and summary metrics of ``part`` at fixed ``thresholds``."""
    y, mask = part_labels(part, label_names)
    report = label_report(y, probs, label_names, mask, thresholds=thresholds)
    return report, summary_metrics(report)


def gap_table(reports: Mapping[str, pd.DataFrame], reference: str = "val") -> pd.DataFrame:
    """One row per label plus ``mean``: each set's AUC and ``gap_<set>`` = reference minus set.

    A set's mean and mean gap cover the labels it and the reference both score, so a label
    one set cannot score (one class there) does not tilt the comparison."""
    auc = pd.DataFrame({name: report.set_index("label")["auc"] for name, report in reports.items()})
    shared = {name: auc[name].notna() & auc[reference].notna() for name in reports}
    mean = {name: auc.loc[shared[name], name].mean() for name in reports}
    for name in [n for n in reports if n != reference]:
        auc[f"gap_{name}"] = auc[reference] - auc[name]
        mean[f"gap_{name}"] = auc.loc[shared[name], f"gap_{name}"].mean()
    auc.loc["mean"] = pd.Series(mean)
    return auc.rename_axis("label").reset_index()


def check_set_names(uses: Mapping[str, str], has_proxy: bool, external_names: list[str]) -> None:
    """Raise, naming the key, if a setting (e.g. ``promotion.holdout``) names a set the run does
    not have; external names must be unique."""
    if len(set(external_names)) != len(external_names):
        raise ConfigError("parameters.external", f"names must be unique, got {external_names}")
    known = ["val"] + (["proxy"] if has_proxy else []) + list(external_names)
    for key, name in uses.items():
        if name not in known:
            hint = " (set split.proxy)" if name == "proxy" else ""
            raise ConfigError(f"parameters.{key}", f"{name!r} is a set this run does not have{hint}; "
                                                   f"choose from {known}{did_you_mean(name, known)}")
