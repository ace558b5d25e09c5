"""The SSL pretraining loop: positives from nearest-neighbour pairs or two views of one image.

Returns the pretrained backbone as a ``BackboneCheckpoint`` that ``fit`` accepts as
initialisation (frozen or trainable), plus one history row per epoch with the loss and the
per-dimension std of L2-normalised embeddings. When that std falls far below the 1/sqrt(d)
of a healthy, spread-out representation, the loop warns that it has collapsed.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from lightly.utils.debug import std_of_l2_normalized
from pydantic import BaseModel, ConfigDict, Field, model_validator
from cxr.progress import progress_bar, write_line

from cxr.models.backbones import create_backbone, feature_dim
from cxr.models.checkpoint import BackboneCheckpoint, BackboneMeta
from cxr.runtime import deterministic, image_stats, resolve_device
from cxr.registry import Registry
from cxr.ssl.methods import SSL_METHODS, SSLMethodName, create_ssl_method
from cxr.ssl.transforms import SSLAugmentConfig, ssl_view

POSITIVES = Registry("SSL positives")
register_positives = POSITIVES.register
PositivesName = POSITIVES.choice()


class RepresentationCollapseWarning(UserWarning):
    """The embeddings have collapsed toward a constant vector."""


class SSLConfig(BaseModel):
    """SSL pretraining knobs (``parameters.ssl`` in YAML). Defaults: SimSiam as in the reference."""

    model_config = ConfigDict(extra="forbid")

    method: SSLMethodName = "simsiam"
    positives: PositivesName = Field("nn_pairs", description="image + its nearest neighbour (nn_pairs), or two "
                                     "augmentations of one image (two_views)")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=4)
    lr: float = Field(0.03, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    hidden_dim: int | None = Field(None, ge=8, description="projection hidden width; None: the method's default")
    out_dim: int | None = Field(None, ge=8, description="projection output width; None: the method's default")
    memory_bank_size: int | None = Field(None, ge=0, description="moco: keys kept as negatives; None: 4096")
    small_views: int | None = Field(None, ge=0, description="swav: low-resolution crops per image; None: 4")
    collapse_ratio: float = Field(0.2, gt=0, lt=1, description="warn when std * sqrt(d) drops below this")
    augment: SSLAugmentConfig = Field(default_factory=SSLAugmentConfig)
    device: str = "auto"
    num_threads: int = Field(0, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _check_method_kwargs(self) -> "SSLConfig":
        SSL_METHODS.check_kwargs(self.method, self.method_kwargs())
        return self

    def method_kwargs(self) -> dict[str, Any]:
        """The method's constructor knobs, straight through (None keeps the method's default)."""
        return {"hidden_dim": self.hidden_dim, "out_dim": self.out_dim, "memory_bank_size": self.memory_bank_size,
                "small_views": self.small_views}


def collapse_check(embeddings: torch.Tensor, ratio: float) -> tuple[float, bool]:
    """(std of L2-normalised embeddings x sqrt(d), collapsed?); about 1 when healthy, 0 when collapsed."""
    score = float(std_of_l2_normalized(embeddings.float())) * math.sqrt(embeddings.shape[1])
    return score, score < ratio


@register_positives("two_views")
def two_view_positives(n_images: int, pairs: np.ndarray | None) -> np.ndarray:
    """Each image with itself: the two views are two augmentations of one image."""
    return np.repeat(np.arange(n_images)[:, None], 2, axis=1)


@register_positives("nn_pairs")
def nn_pair_positives(n_images: int, pairs: np.ndarray | None) -> np.ndarray:
    """The (P, 2) anchor/neighbour pairs of the nn_pairs step."""
    if pairs is None or len(pairs) == 0:
        raise ValueError("positives='nn_pairs' needs the pairs from the nn_pairs step")
    if pairs.max() >= n_images:
        raise ValueError(f"pair index {int(pairs.max())} is outside the {n_images} pool images")
    return pairs


def positive_pairs(n_images: int, pairs: np.ndarray | None, positives: str) -> np.ndarray:
    """(P, 2) anchor/positive indices under the ``positives`` rule."""
    return POSITIVES.create(positives, n_images, pairs)


def make_views(x: torch.Tensor, anchor: torch.Tensor, positive: torch.Tensor, small_views: int,
               cfg: SSLConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """Two full-size views (anchor, positive) plus ``small_views`` half-size crops of the anchor."""
    a, p = x[anchor], x[positive]
    views = [ssl_view(a, cfg.augment, generator), ssl_view(p, cfg.augment, generator)]
    small = max(x.shape[-1] // 2, 16)
    views += [ssl_view(a, cfg.augment, generator, small, cfg.augment.small_crop_scale) for _ in range(small_views)]
    return views


def pretrain(images: np.ndarray, backbone: str, cfg: SSLConfig, pairs: np.ndarray | None = None,
             progress: bool = True, on_epoch: Callable[[dict], None] | None = None) -> tuple[BackboneCheckpoint, pd.DataFrame]:
    """Self-supervised training of ``backbone`` (a timm name) on uint8 (N, H, W) ``images``."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    positives = positive_pairs(len(images), pairs, cfg.positives)
    if len(positives) < cfg.batch_size:
        raise ValueError(f"{len(positives)} positive pairs are fewer than one batch of {cfg.batch_size}")
    with deterministic(cfg.seed):
        net = create_backbone(backbone)
        method = create_ssl_method(cfg.method, net, feature_dim(net), **cfg.method_kwargs()).to(device)
        mean, std = image_stats(images, seed=cfg.seed)
        optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=cfg.lr,
                                    momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        steps_per_epoch = len(positives) // cfg.batch_size
        max_steps = cfg.epochs * steps_per_epoch
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max_steps)
        generator = torch.Generator().manual_seed(cfg.seed)
        history, step = [], 0
        for epoch in range(1, cfg.epochs + 1):
            method.train()
            started, losses, scores = time.perf_counter(), [], []
            order = torch.randperm(len(positives), generator=generator)[:steps_per_epoch * cfg.batch_size]
            bar = progress_bar(order.view(steps_per_epoch, cfg.batch_size), disable=not progress, leave=False,
                               desc=f"ssl {cfg.method} {epoch}/{cfg.epochs}", every=0.25)
            for batch in bar:
                chosen = positives[batch.numpy()]
                unique, inverse = np.unique(chosen, return_inverse=True)
                x = torch.from_numpy(images[unique]).to(device).unsqueeze(1).float().div_(255)
                inverse = torch.from_numpy(inverse.reshape(chosen.shape)).to(device)
                views = [(v - mean) / std for v in make_views(x, inverse[:, 0], inverse[:, 1], method.small_views, cfg, generator)]
                loss, embeddings = method.loss(views, step, max_steps)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                losses.append(loss.item())
                scores.append(collapse_check(embeddings, cfg.collapse_ratio)[0])
                bar.set_postfix(loss=f"{losses[-1]:.4f}", std=f"{scores[-1]:.3f}")
            seconds = time.perf_counter() - started
            row = {"epoch": epoch, "loss": float(np.mean(losses)), "embedding_std": float(np.mean(scores)),
                   "collapsed": bool(np.mean(scores) < cfg.collapse_ratio), "lr": scheduler.get_last_lr()[0],
                   "seconds": seconds, "images_per_s": steps_per_epoch * cfg.batch_size / seconds}
            history.append(row)
            if row["collapsed"]:
                warnings.warn(f"SSL epoch {epoch}: embeddings collapsed (std x sqrt(d) = {row['embedding_std']:.3f} "
                              f"< {cfg.collapse_ratio}); lower lr or change augmentations", RepresentationCollapseWarning)
            if on_epoch is not None:
                on_epoch(row)
            if progress:
                write_line(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    meta = BackboneMeta(backbone=backbone, image_size=int(images.shape[-1]), method=cfg.method,
                        positives=cfg.positives, epochs=cfg.epochs, mean=mean, std=std,
                        final_loss=history[-1]["loss"], embedding_std=history[-1]["embedding_std"])
    return BackboneCheckpoint.from_module(method.backbone.cpu(), meta), pd.DataFrame(history)


def with_target(images: np.ndarray, target: np.ndarray, pairs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The SSL pool for domain-adaptive pretraining: ``images`` followed by a target site's
    unlabelled ``target`` images; nearest-neighbour ``pairs`` (indices into ``images``) gain
    each target image paired with itself, so it is seen as two views of one image."""
    pool = np.concatenate([images, target])
    if pairs is None:
        return pool, None
    extra = np.arange(len(images), len(pool), dtype=pairs.dtype if len(pairs) else np.int64)
    return pool, np.concatenate([pairs.reshape(-1, 2), np.stack([extra, extra], 1)])
