"""Champion/challenger decision: a paired bootstrap of the mean-AUC difference between a new
model and the current champion on the same evaluation images.

Paired: each bootstrap replicate resamples images once and scores both models on that
same resample, so the interval reflects the difference, not two independent noises.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy.stats import rankdata

from cxr.data.imageset import ImageSet
from cxr.data.split import SPLIT_NAMES
from cxr.errors import DataError
from cxr.metrics.classification import mean_auc


class PromotionConfig(BaseModel):
    """When a new version replaces the champion (``parameters.promotion`` in YAML)."""

    model_config = ConfigDict(extra="forbid")

    holdout: str = Field("val", pattern=r"^[A-Za-z0-9_-]+$", description="set both versions are scored on: "
                         "val, proxy (the same images for every version trained with the same split.proxy), or "
                         "the name of a labelled parameters.external set")
    margin: float = Field(0.0, ge=0, description="required mean-AUC gain over the champion")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="one-sided: the CI lower bound must beat the margin")
    n_bootstrap: int = Field(1000, ge=100)
    seed: int = 0
    registry_wait_s: float = Field(600, gt=0, description="how long a promotion waits for the registry: "
                                   "another run's promotion of the same model, or a database locked by another writer")

    @field_validator("holdout")
    @classmethod
    def _not_train(cls, value: str) -> str:
        if value == "train":
            raise ValueError("promotion.holdout cannot be the train split: name val, proxy or an external set")
        return value


@dataclass(frozen=True)
class PromotionDecision:
    """Whether to promote, and the evidence (AUCs, bootstrap interval of the difference)."""

    promote: bool
    reason: str
    new_auc: float
    champion_auc: float | None = None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def check_holdout_unseen(train: ImageSet, holdout: ImageSet, name: str) -> None:
    """Raise a DataError if ``holdout`` shares an image with ``train``, by id or by pixel content
    (the same picture under another file name)."""
    if (train.images is None) != (holdout.images is None):
        raise ValueError("both sets must be decoded, or neither, to compare their content")
    by_id = sorted(set(train.ids) & set(holdout.ids))
    train_digests = set(train.image_digests())
    by_content = [i for i, d in zip(holdout.ids, holdout.image_digests()) if d in train_digests]
    if by_id or by_content:
        raise DataError(f"promotion.holdout {name!r} overlaps the train split: {len(by_id)} image id(s) and "
                        f"{len(by_content)} image(s) with the same pixels as a training image; a holdout must be "
                        "images no version trained on (remove them, or hold out another set)")


def holdout_set(images: ImageSet, cfg: PromotionConfig, external: ImageSet | None = None) -> ImageSet:
    """The set promotion scores on: the ``cfg.holdout`` split of ``images`` (val, proxy) or the
    external set of that name, checked to share no image with the train split."""
    holdout = images.split(cfg.holdout) if cfg.holdout in SPLIT_NAMES else external
    if holdout is None or len(holdout) == 0:
        raise DataError(f"promotion.holdout {cfg.holdout!r} holds no images in this run")
    missing = [label for label in images.label_names if label not in holdout.label_names]
    if missing or not holdout.is_labelled:
        raise DataError(f"promotion.holdout {cfg.holdout!r} has no known labels for {missing or 'any label'}: a "
                        "holdout must be labelled like the training data")
    check_holdout_unseen(images.split("train"), holdout, cfg.holdout)
    return holdout


def resampled_auc(scores: np.ndarray, y: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(B,) ROC AUC of ``scores`` on each row resample ``rows`` (B, n); NaN where one class is drawn."""
    s, t = scores[rows], y[rows] > 0.5
    ranks = rankdata(s, axis=1)
    n_pos = t.sum(1)
    n_neg = t.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * t).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_auc_deltas(y: np.ndarray, mask: np.ndarray, p_new: np.ndarray, p_old: np.ndarray,
                         n_bootstrap: int = 1000, seed: int = 0) -> np.ndarray:
    """(B,) paired-bootstrap replicates of mean-over-labels AUC(new) - AUC(old).

    Per label, the images with a known label are resampled; both models are scored on the
    same resample. Labels whose resample draws one class are left out of that replicate.
    """
    rng = np.random.default_rng(seed)
    deltas = np.full((n_bootstrap, y.shape[1]), np.nan)
    for j in range(y.shape[1]):
        known = np.flatnonzero(mask[:, j])
        if len(known) < 2:
            continue
        rows = known[rng.integers(0, len(known), size=(n_bootstrap, len(known)))]
        deltas[:, j] = resampled_auc(p_new[:, j], y[:, j], rows) - resampled_auc(p_old[:, j], y[:, j], rows)
    with np.errstate(all="ignore"):
        return np.nanmean(np.where(np.isfinite(deltas), deltas, np.nan), axis=1)


def decide(y: np.ndarray, mask: np.ndarray, p_new: np.ndarray, p_champion: np.ndarray | None,
           cfg: PromotionConfig = PromotionConfig()) -> PromotionDecision:
    """Promote when there is no champion, or when the one-sided ``confidence`` lower bound of
    the paired AUC difference exceeds ``margin``."""
    new_auc = mean_auc(y, p_new, mask)
    if p_champion is None:
        return PromotionDecision(True, "no champion yet", new_auc)
    deltas = bootstrap_auc_deltas(y, mask, p_new, p_champion, cfg.n_bootstrap, cfg.seed)
    deltas = deltas[np.isfinite(deltas)]
    if len(deltas) == 0:
        raise ValueError("no bootstrap replicate had both classes for any label: the evaluation set is too small")
    low, high = np.quantile(deltas, [1 - cfg.confidence, cfg.confidence])
    champion_auc = mean_auc(y, p_champion, mask)
    promote = bool(low > cfg.margin)
    verdict = "better" if promote else "not better"
    reason = (f"{verdict}: AUC {new_auc:.4f} vs champion {champion_auc:.4f}, difference "
              f"{new_auc - champion_auc:+.4f}, {cfg.confidence:.0%} lower bound {low:+.4f} vs margin {cfg.margin}")
    return PromotionDecision(promote, reason, new_auc, champion_auc, new_auc - champion_auc, float(low), float(high))
