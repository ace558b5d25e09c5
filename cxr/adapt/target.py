"""Adaptation of a trained checkpoint to one target site's unlabelled images: optional rounds
of self-training, then AdaBN; the checkpoint records which set adapted it, by content hash."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from cxr.adapt.batchnorm import adabn_checkpoint, batchnorm_layers
from cxr.adapt.selftrain import SelfTrainConfig, self_train
from cxr.data.imageset import ImageSet
from cxr.errors import ConfigError, DataError, did_you_mean
from cxr.models.checkpoint import Checkpoint
from cxr.train.config import TrainConfig


class AdaptConfig(BaseModel):
    """Which target set adapts the model and how (``parameters.adapt``)."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field("test", description="the set whose unlabelled images adapt the model: test (the "
                        "run's test_data) or the name of an external set")
    batchnorm: bool = Field(True, description="AdaBN: BatchNorm statistics re-estimated on the target images")
    ssl: bool = Field(False, description="domain-adaptive SSL: the target images join the SSL pool "
                      "(needs parameters.ssl)")
    self_training: SelfTrainConfig | None = Field(None, description="pseudo-label rounds on the target "
                                                  "images before AdaBN (None: off)")

    @property
    def methods(self) -> list[str]:
        """The adaptations applied, in order."""
        return [name for name, on in (("ssl", self.ssl), ("self_training", self.self_training is not None),
                                      ("adabn", self.batchnorm)) if on]


def unlabelled(images: ImageSet) -> ImageSet:
    """``images`` with every label dropped: all adaptation ever sees of a target set."""
    n = len(images)
    return replace(images, label_names=(), labels=np.zeros((n, 0), np.float32), mask=np.zeros((n, 0), bool))


def check_target(checkpoint: Checkpoint, target: ImageSet) -> None:
    """Raise a DataError if ``target`` cannot adapt ``checkpoint``."""
    if target.images is None or len(target) < 2:
        raise DataError("the adaptation target needs at least 2 decoded images")
    size = checkpoint.meta.image_size
    if target.images.shape[1:] != (size, size):
        raise DataError(f"target images are {target.images.shape[1:]} but the model was trained at {size}x{size}")


def adapt_to_target(checkpoint: Checkpoint, images: ImageSet, target: ImageSet, cfg: AdaptConfig,
                    train_cfg: TrainConfig, progress: bool = True,
                    on_round: Callable[[dict], None] | None = None) -> tuple[Checkpoint, pd.DataFrame]:
    """``checkpoint`` adapted to ``target`` (labels never read) by self-training on ``images``'
    train split plus pseudo-labelled target images, then AdaBN; returns it and the
    self-training log (empty without self-training). ``meta.adaptation`` records the target's
    name, label-free content hash, size and the methods."""
    check_target(checkpoint, target)
    target = unlabelled(target)
    rounds = pd.DataFrame()
    if cfg.self_training is not None:
        proxy = images.split("proxy")
        checkpoint, rounds = self_train(checkpoint, images.split("train"), images.split("val"), target.images,
                                        train_cfg, cfg.self_training, proxy if len(proxy) else None, progress,
                                        on_round)
    layers = 0
    if cfg.batchnorm:
        layers = len(batchnorm_layers(checkpoint.build_model()))
        checkpoint = adabn_checkpoint(checkpoint, target.images, device=train_cfg.device)
    record = {"target": cfg.target, "target_hash": target.content_hash(), "target_images": len(target),
              "methods": cfg.methods, "batchnorm_layers": layers}
    return Checkpoint(checkpoint.state_dict, checkpoint.meta.model_copy(update={"adaptation": record})), rounds


def check_adapt_target(cfg: AdaptConfig, has_test: bool, external_names: list[str], has_ssl: bool) -> None:
    """Raise, naming the key, if ``adapt`` names a set the run lacks or asks for SSL without it."""
    known = (["test"] if has_test else []) + list(external_names)
    if cfg.target not in known:
        hint = " (set test_data)" if cfg.target == "test" else ""
        raise ConfigError("parameters.adapt.target", f"{cfg.target!r} is a set this run does not have{hint}; "
                          f"choose from {known}{did_you_mean(cfg.target, known)}")
    if cfg.ssl and not has_ssl:
        raise ConfigError("parameters.adapt.ssl",
                          "adds the target images to the SSL pool, but parameters.ssl is not set")
