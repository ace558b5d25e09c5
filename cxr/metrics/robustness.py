"""Robustness to acquisition differences: a model's mean AUC on an image set under every
corruption of ``cxr.data.corruptions`` at every severity, against its clean AUC."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator
from cxr.progress import progress_bar

from cxr.adapt.batchnorm import adapt_batchnorm
from cxr.data.corruptions import CORRUPTIONS, SEVERITIES, CorruptionName, corrupt
from cxr.data.imageset import ImageSet
from cxr.errors import DataError
from cxr.infer.predict import predict_proba
from cxr.infer.tta import tta_views
from cxr.metrics.classification import mean_auc
from cxr.models.checkpoint import Checkpoint


class RobustnessConfig(BaseModel):
    """Which corruptions and severities score the model, on how many images (``parameters.robustness``)."""

    model_config = ConfigDict(extra="forbid")

    corruptions: list[CorruptionName] = Field(default_factory=CORRUPTIONS.names)
    severities: list[int] = Field(default_factory=lambda: list(SEVERITIES))
    subset: str = Field("val", description="split scored: val, or proxy")
    max_images: int | None = Field(1000, ge=2, description="a seeded sample of the split, to bound the cost "
                                   "(corruptions x severities forward passes over it); None: all")
    views: list[str] = Field(default_factory=lambda: ["original"], description="TTA views per corrupted image")
    batch_size: int = Field(64, ge=1)
    adabn: bool = Field(False, description="re-estimate BatchNorm statistics on each corrupted set before "
                        "scoring it: what AdaBN at a site with that corruption recovers")
    seed: int = 0

    @field_validator("severities")
    @classmethod
    def _severities(cls, value: list[int]) -> list[int]:
        bad = sorted(set(value) - set(SEVERITIES))
        if bad or not value:
            raise ValueError(f"severities must be a non-empty subset of {list(SEVERITIES)}, got {value}")
        return value


def scored_sample(part: ImageSet, cfg: RobustnessConfig) -> ImageSet:
    """The rows scored: all, or a seeded sample of ``cfg.max_images``."""
    if part.images is None or not part.is_labelled:
        raise DataError(f"robustness needs decoded, labelled images; the {cfg.subset} split has none")
    if cfg.max_images is None or len(part) <= cfg.max_images:
        return part
    return part.subset(np.sort(np.random.default_rng(cfg.seed).permutation(len(part))[:cfg.max_images]))


def robustness_table(checkpoint: Checkpoint, part: ImageSet, cfg: RobustnessConfig = RobustnessConfig(),
                     device: str = "auto", progress: bool = True) -> pd.DataFrame:
    """One row per (corruption, severity) with the mean AUC over labels, after a clean row
    (corruption ``none``, severity 0)."""
    sample = scored_sample(part, cfg)
    model, meta, views = checkpoint.build_model(), checkpoint.meta, tta_views(cfg.views)

    def auc(images: np.ndarray) -> float:
        scored = model
        if cfg.adabn:
            scored = copy.deepcopy(model)
            adapt_batchnorm(scored, images, meta.mean, meta.std, cfg.batch_size, device)
        probs = predict_proba(scored, images, meta.mean, meta.std, cfg.batch_size, device, views)
        return mean_auc(sample.labels, probs, sample.mask)

    rows = [{"corruption": "none", "severity": 0, "auc": auc(sample.images)}]
    grid = [(name, s) for name in cfg.corruptions for s in cfg.severities]
    for name, severity in progress_bar(grid, desc="corruptions", disable=not progress, leave=False):
        rows.append({"corruption": name, "severity": severity,
                     "auc": auc(corrupt(sample.images, name, severity, cfg.seed))})
    return pd.DataFrame(rows)


def robustness_summary(table: pd.DataFrame) -> dict[str, float]:
    """Clean AUC, mean corruption AUC (over every corruption and severity), their ratio, and
    each corruption's mean over its severities as ``<name>_auc``."""
    corrupted = table[table["corruption"] != "none"]
    clean = float(table.loc[table["corruption"] == "none", "auc"].iloc[0])
    mean = float(corrupted["auc"].mean())
    per = corrupted.groupby("corruption")["auc"].mean()
    return {"clean_auc": clean, "mean_corruption_auc": mean, "relative_corruption_auc": mean / clean,
            **{f"{name}_auc": float(value) for name, value in per.items()}}
