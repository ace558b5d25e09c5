"""Input guardrails: flag the images a model should not be trusted on, next to their scores.

Four checks read what preprocessing recorded about each source (``SOURCE_COLUMNS``): too
small, near-constant, extreme clipping, colour. Two are fitted on the training images and
stored in the checkpoint as ``guardrails.*`` tensors:

- ``inverted``: a logistic regression (scikit-learn) on 16x16 thumbnails of the preprocessed
  training images against their negatives, so a likely inverted image is caught whatever its
  scanner;
- ``out_of_distribution``: a Ledoit-Wolf Gaussian (scikit-learn) of the training images'
  penultimate features; an image whose squared Mahalanobis distance exceeds the
  ``ood_percentile``-th percentile of val's is flagged (Lee et al., 2018,
  https://arxiv.org/abs/1807.03888).

Flagged images keep their probabilities unless ``reject`` is set; then those are NaN.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import cv2
import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression

from cxr.cft.head import penultimate_features
from cxr.data.imageset import ImageSet
from cxr.models.checkpoint import EXTRA_PREFIX, Checkpoint
from cxr.registry import Registry
from cxr.runtime import seeded_sample

CHECKS = Registry("guardrail check")
CheckName = CHECKS.choice()
FITTED_CHECKS = ("inverted", "out_of_distribution")
THUMBNAIL = 16


class GuardrailConfig(BaseModel):
    """Which inputs are flagged, and at what thresholds (``parameters.guardrails`` in YAML)."""

    model_config = ConfigDict(extra="forbid")

    checks: list[CheckName] = Field(default_factory=lambda: CHECKS.names(), description="registered checks to run")
    min_side: int = Field(64, ge=1, description="too_small: shorter side of the source below this, px")
    min_std: float = Field(3.0, ge=0, description="constant: source gray-level std below this")
    max_clipped: float = Field(0.6, gt=0, le=1, description="clipped: share of source pixels at 0 or 255 above this")
    max_colour: float = Field(10.0, ge=0, description="colour: mean channel spread of the source above this, levels")
    max_inverted: float = Field(0.5, gt=0, lt=1, description="inverted: polarity-model probability above this")
    ood_percentile: float = Field(99.0, gt=50, le=100, description="out_of_distribution: val percentile of the "
                                                                    "Mahalanobis distance that sets the threshold")
    max_fit_images: int = Field(2000, ge=10, description="training images the fitted checks see, at most")
    reject: bool = Field(False, description="give flagged images NaN probabilities instead of scores")


def _source(images: ImageSet, name: str) -> np.ndarray:
    if name not in images.manifest.columns:
        raise ValueError(f"the image set has no {name!r} column: preprocess it with preprocess_imageset first")
    return images.manifest[name].to_numpy(np.float64)


@CHECKS.register("too_small")
def too_small(images: ImageSet, cfg: GuardrailConfig, scores: dict) -> np.ndarray:
    """The source's shorter side is under ``min_side`` px (a thumbnail, a 1x1 export)."""
    return np.minimum(_source(images, "source_height"), _source(images, "source_width")) < cfg.min_side


@CHECKS.register("constant")
def constant(images: ImageSet, cfg: GuardrailConfig, scores: dict) -> np.ndarray:
    """The source is (nearly) one gray level: blank, all black, all white."""
    return _source(images, "source_std") < cfg.min_std


@CHECKS.register("clipped")
def clipped(images: ImageSet, cfg: GuardrailConfig, scores: dict) -> np.ndarray:
    """Most of the source sits at 0 or 255: a wrong window or a saturated detector."""
    return _source(images, "source_clipped") > cfg.max_clipped


@CHECKS.register("colour")
def colour(images: ImageSet, cfg: GuardrailConfig, scores: dict) -> np.ndarray:
    """The source has colour content: a photo, a screenshot, an annotated export."""
    return _source(images, "source_colour") > cfg.max_colour


@CHECKS.register("inverted")
def inverted(images: ImageSet, cfg: GuardrailConfig, scores: dict) -> np.ndarray:
    """The polarity model calls it a negative (bone dark)."""
    return scores["inverted"] > cfg.max_inverted


@CHECKS.register("out_of_distribution")
def out_of_distribution(images: ImageSet, cfg: GuardrailConfig, scores: dict) -> np.ndarray:
    """Its penultimate features are further from the training images' than val's ``ood_percentile``."""
    return scores["ood_distance"] > scores["ood_threshold"]


def thumbnails(images: np.ndarray) -> np.ndarray:
    """(N, 256) float32: each uint8 image area-resized to 16x16, scaled to 0-1."""
    return np.stack([cv2.resize(np.ascontiguousarray(i), (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA)
                     for i in images]).reshape(len(images), -1).astype(np.float32) / 255


def fit_guardrails(checkpoint: Checkpoint, train: np.ndarray, val: np.ndarray,
                   cfg: GuardrailConfig = GuardrailConfig(), seed: int = 0, device: str = "auto") -> Checkpoint:
    """``checkpoint`` with the polarity model and the feature Gaussian fitted on ``train`` (uint8
    (N, H, W)) and the distance threshold set on ``val``; the model weights are unchanged."""
    if len(train) < 10 or len(val) < 2:
        raise ValueError(f"guardrails need at least 10 train and 2 val images, got {len(train)} and {len(val)}")
    train = seeded_sample(train, cfg.max_fit_images, seed)
    gaussian = LedoitWolf().fit(penultimate_features(checkpoint, train, device=device).astype(np.float64))
    val_distance = gaussian.mahalanobis(penultimate_features(checkpoint, val, device=device).astype(np.float64))
    thumbs = thumbnails(train)
    polarity = LogisticRegression(C=0.1, max_iter=2000).fit(
        np.concatenate([thumbs, 1 - thumbs]), np.repeat([0, 1], len(thumbs)))
    tensors = {"ood_location": gaussian.location_, "ood_precision": gaussian.precision_,
               "ood_threshold": np.array([np.percentile(val_distance, cfg.ood_percentile)]),
               "polarity_weight": polarity.coef_[0], "polarity_bias": polarity.intercept_}
    state = checkpoint.model_state | {EXTRA_PREFIX + k: torch.as_tensor(np.asarray(v, np.float32)).contiguous()
                                      for k, v in tensors.items()}
    return replace(checkpoint, state_dict=state, meta=checkpoint.meta.model_copy(update={"guardrails": cfg.model_dump()}))


def fitted(checkpoint: Checkpoint) -> dict[str, np.ndarray]:
    """The checkpoint's ``guardrails.*`` tensors by short name (empty if never fitted)."""
    return {k[len(EXTRA_PREFIX):]: v.numpy().astype(np.float64) for k, v in checkpoint.state_dict.items()
            if k.startswith(EXTRA_PREFIX)}


def scores(checkpoint: Checkpoint, images: np.ndarray, device: str = "auto") -> dict:
    """Polarity probability and squared Mahalanobis distance per image, plus the fitted threshold."""
    t = fitted(checkpoint)
    logit = thumbnails(images) @ t["polarity_weight"] + t["polarity_bias"][0]
    delta = penultimate_features(checkpoint, images, device=device).astype(np.float64) - t["ood_location"]
    return {"inverted": 1 / (1 + np.exp(-logit)), "ood_distance": np.einsum("nd,de,ne->n", delta, t["ood_precision"], delta),
            "ood_threshold": float(t["ood_threshold"][0])}


def guardrail_config(checkpoint: Checkpoint, cfg: GuardrailConfig | None = None) -> GuardrailConfig:
    """``cfg``, else the config the checkpoint's guardrails were fitted with, else the defaults."""
    return cfg or GuardrailConfig(**checkpoint.meta.guardrails)


def guard(checkpoint: Checkpoint, images: ImageSet, cfg: GuardrailConfig | None = None,
          device: str = "auto") -> pd.DataFrame:
    """``id``, ``flag`` and ``flag_reason`` (the failed checks, ``;``-joined) for preprocessed ``images``.

    A checkpoint without fitted guardrails runs the source checks only, with a warning.
    """
    cfg = guardrail_config(checkpoint, cfg)
    checks = list(cfg.checks)
    if any(c in FITTED_CHECKS for c in checks) and not fitted(checkpoint):
        warnings.warn("this checkpoint has no fitted guardrails: the inverted and out_of_distribution checks are "
                      "skipped", stacklevel=2)
        checks = [c for c in checks if c not in FITTED_CHECKS]
    needs_scores = any(c in FITTED_CHECKS for c in checks) and len(images)
    values = scores(checkpoint, images.images, device) if needs_scores else {}
    failed = {name: CHECKS.create(name, images, cfg, values) for name in checks}
    reasons = [";".join(name for name in checks if failed[name][i]) for i in range(len(images))]
    return pd.DataFrame({"id": images.ids, "flag": [bool(r) for r in reasons], "flag_reason": reasons})


def flagged_predictions(predictions: pd.DataFrame, flags: pd.DataFrame, label_names: list[str],
                        reject: bool = False) -> pd.DataFrame:
    """``predictions`` (id + label columns, in ``flags``' order) with ``flag`` and ``flag_reason``
    added; with ``reject`` the flagged rows' probabilities are NaN."""
    if predictions["id"].tolist() != flags["id"].tolist():
        raise ValueError("predictions and guardrail flags are not for the same images in the same order")
    out = predictions.assign(flag=flags["flag"].to_numpy(), flag_reason=flags["flag_reason"].to_numpy())
    if reject:
        out.loc[out["flag"], list(label_names)] = np.nan
    return out
