"""Self-training on a target site: confident predictions on its unlabelled images become
pseudo-labels, and the model is fine-tuned on train plus the pseudo-labelled images.

Only the target's pixels reach this module (``target_images`` is an array), so no target
label can be read. A label is pseudo-labelled positive where p >= threshold, negative where
p <= 1 - threshold, and left unknown (masked out of the loss) in between; images with no
confident label are not used.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from cxr.data.imageset import ImageSet, make_manifest
from cxr.data.shards import concat_images, take_rows
from cxr.infer.predict import predict_proba
from cxr.infer.tta import ViewName, tta_views
from cxr.models.checkpoint import Checkpoint
from cxr.train.config import TrainConfig
from cxr.train.loop import fit


class SelfTrainConfig(BaseModel):
    """Rounds of pseudo-labelling and fine-tuning (``parameters.adapt.self_training``)."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(1, ge=1)
    threshold: float = Field(0.9, gt=0.5, lt=1, description="confidence for a pseudo-label: p >= t positive, "
                             "p <= 1 - t negative, else unknown")
    epochs: int = Field(2, ge=1, description="fine-tune epochs per round, from the current weights")
    lr_scale: float = Field(0.3, gt=0, le=1, description="the round's lr as a share of train.lr")
    views: list[ViewName] = Field(default_factory=lambda: ["original", "hflip"],
                                  description="TTA views averaged for the pseudo-labels")


def pseudo_labels(probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(labels, mask) from (N, L) probabilities: 1/0 where confident, masked elsewhere."""
    mask = (probs >= threshold) | (probs <= 1 - threshold)
    return np.where(mask, probs >= threshold, 0).astype(np.float32), mask


def pseudo_labelled(images: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                    label_names: tuple[str, ...]) -> ImageSet:
    """The target images with at least one confident label (``pseudo_labels``' mask), as train
    rows of pseudo-patients."""
    keep = np.flatnonzero(mask.any(axis=1))
    ids = [f"target-{i}" for i in keep]
    manifest = make_manifest(ids, ids).assign(split="train")
    return ImageSet(manifest, label_names, labels[keep], mask[keep], take_rows(images, keep))


def joined(train: ImageSet, extra: ImageSet) -> ImageSet:
    """Train rows followed by ``extra``'s."""
    return ImageSet(pd.concat([train.manifest, extra.manifest], ignore_index=True), train.label_names,
                    np.concatenate([train.labels, extra.labels]), np.concatenate([train.mask, extra.mask]),
                    concat_images([train.images, extra.images]))


def round_config(train_cfg: TrainConfig, cfg: SelfTrainConfig) -> TrainConfig:
    """The fine-tune settings of one round: fewer epochs at a lower lr, no early stop."""
    return train_cfg.model_copy(update={"epochs": cfg.epochs, "lr": train_cfg.lr * cfg.lr_scale,
                                        "early_stopping_patience": None,
                                        "swa_epochs": min(train_cfg.swa_epochs, cfg.epochs)})


def self_train(checkpoint: Checkpoint, train: ImageSet, val: ImageSet, target_images: np.ndarray,
               train_cfg: TrainConfig, cfg: SelfTrainConfig = SelfTrainConfig(), proxy: ImageSet | None = None,
               progress: bool = True, on_round: Callable[[dict], None] | None = None) -> tuple[Checkpoint, pd.DataFrame]:
    """``cfg.rounds`` rounds of pseudo-labelling ``target_images`` (uint8 (N, H, W), preprocessed
    as train) with the current model and fine-tuning it on train plus them; returns the last
    round's best checkpoint and one log row per round (threshold, share of target images and
    labels used, pseudo-positive rate, the round's val/proxy AUC)."""
    rounds = []
    for number in range(1, cfg.rounds + 1):
        meta = checkpoint.meta
        probs = predict_proba(checkpoint.build_model(), target_images, meta.mean, meta.std,
                              train_cfg.batch_size * 2, train_cfg.device, tta_views(cfg.views))
        labels, mask = pseudo_labels(probs, cfg.threshold)
        pseudo = pseudo_labelled(target_images, labels, mask, train.label_names)
        result = fit(joined(train, pseudo), val, meta.model, round_config(train_cfg, cfg), meta.preprocess,
                     progress, init=checkpoint, proxy=proxy)
        checkpoint = result.checkpoint
        row = {"round": number, "threshold": cfg.threshold, "target_images": len(target_images),
               "target_share_used": len(pseudo) / max(len(target_images), 1),
               "label_share_used": float(mask.mean()) if mask.size else 0.0,
               "pseudo_positive_rate": float(labels[mask].mean()) if mask.any() else float("nan"),
               **checkpoint.meta.val_metrics}
        rounds.append(row)
        if on_round is not None:
            on_round(row)
    return checkpoint, pd.DataFrame(rounds)
