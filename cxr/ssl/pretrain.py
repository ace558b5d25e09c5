"""The SSL pretraining loop: positives from nearest-neighbour pairs or two views of one image.

Returns the pretrained backbone as a ``BackboneCheckpoint`` that ``fit`` accepts as
initialisation (frozen or trainable), plus one history row per epoch with the loss and the
per-dimension std of L2-normalised embeddings. When that std falls far below the 1/sqrt(d)
of a healthy, spread-out representation, the loop warns that it has collapsed.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from lightly.utils.debug import std_of_l2_normalized
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cxr.data.shards import concat_images
from cxr.models.backbones import create_backbone, feature_dim
from cxr.models.checkpoint import BackboneCheckpoint, BackboneMeta
from cxr.progress import progress_bar, write_line
from cxr.runtime import deterministic, image_stats, resolve_device
from cxr.registry import Registry
from cxr.ssl.methods import SSL_METHODS, SSLMethodName, create_ssl_method
from cxr.ssl.transforms import SSLAugmentConfig, ssl_view
from cxr.train.resume import ResumeStore, StopRequest, plain, rng_state, set_rng_state

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


@dataclass
class SSLRun:
    """What the SSL loop carries from step to step and epoch to epoch; all of it is resume state."""

    method: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    steps_per_epoch: int
    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    partial: dict | None = None


def ssl_snapshot(run: SSLRun) -> dict:
    """Everything ``ssl_restore`` needs to continue bit-identically, with every buffer (lightly's
    memory bank is a non-persistent one, so ``state_dict`` alone would lose it)."""
    return {"epoch": run.epoch, "step": run.step, "history": [plain(row) for row in run.history],
            "partial": run.partial, "method": run.method.state_dict(),
            "buffers": {name: buffer.cpu() for name, buffer in run.method.named_buffers()},
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "generator": run.generator.get_state(), "rng": rng_state()}


def ssl_restore(run: SSLRun, saved: dict) -> None:
    """Put an ``ssl_snapshot`` back into ``run``."""
    run.method.load_state_dict(saved["method"])
    for name, value in saved["buffers"].items():
        owner, _, attribute = name.rpartition(".")
        module = run.method.get_submodule(owner)
        setattr(module, attribute, value.to(getattr(module, attribute).device))
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    run.generator.set_state(saved["generator"])
    set_rng_state(saved["rng"])
    run.epoch, run.step, run.history, run.partial = saved["epoch"], saved["step"], saved["history"], saved["partial"]


def pretrain(images: np.ndarray, backbone: str, cfg: SSLConfig, pairs: np.ndarray | None = None,
             progress: bool = True, on_epoch: Callable[[dict], None] | None = None,
             resume: ResumeStore | None = None) -> tuple[BackboneCheckpoint, pd.DataFrame]:
    """Self-supervised training of ``backbone`` (a timm name) on uint8 (N, H, W) ``images``.

    With ``resume``, the loop continues from the state saved there (replaying the saved epochs'
    rows to ``on_epoch``), saves its state after every epoch, and on SIGINT/SIGTERM after the
    current step before it stops; the result is the same as an uninterrupted run's.
    """
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    positives = positive_pairs(len(images), pairs, cfg.positives)
    if len(positives) < cfg.batch_size:
        raise ValueError(f"{len(positives)} positive pairs are fewer than one batch of {cfg.batch_size}")
    with deterministic(cfg.seed), (StopRequest() if resume is not None else contextlib.nullcontext()) as stop:
        net = create_backbone(backbone)
        method = create_ssl_method(cfg.method, net, feature_dim(net), **cfg.method_kwargs()).to(device)
        mean, std = image_stats(images, seed=cfg.seed)
        optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=cfg.lr,
                                    momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        steps_per_epoch = len(positives) // cfg.batch_size
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * steps_per_epoch)
        run = SSLRun(method, optimizer, scheduler, torch.Generator().manual_seed(cfg.seed), steps_per_epoch)
        saved = resume.load() if resume is not None else None
        if saved is not None:
            ssl_restore(run, saved)
            write_line(resumed_ssl_from(run, cfg.epochs, resume.folder))
            for row in run.history if on_epoch is not None else []:
                on_epoch(row)
        while run.epoch < cfg.epochs:
            ssl_epoch(run, images, positives, (mean, std), cfg, device, progress, stop, resume)
            row = run.history[-1]
            if row["collapsed"]:
                warnings.warn(f"SSL epoch {row['epoch']}: embeddings collapsed (std x sqrt(d) = "
                              f"{row['embedding_std']:.3f} < {cfg.collapse_ratio}); lower lr or change augmentations",
                              RepresentationCollapseWarning)
            if on_epoch is not None:
                on_epoch(row)
            if progress:
                write_line(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if stop is not None and stop.signal is not None:
            stop.stop()  # the signal came in the last step: the finished state is saved
    meta = BackboneMeta(backbone=backbone, image_size=int(images.shape[-1]), method=cfg.method,
                        positives=cfg.positives, epochs=cfg.epochs, mean=mean, std=std,
                        final_loss=run.history[-1]["loss"], embedding_std=run.history[-1]["embedding_std"])
    return BackboneCheckpoint.from_module(method.backbone.cpu(), meta), pd.DataFrame(run.history)


def resumed_ssl_from(run: SSLRun, epochs: int, folder) -> str:
    """The one log line that says where a resumed SSL run goes on from."""
    if run.epoch == epochs:
        return f"SSL pretraining had finished: {run.epoch} epochs restored from {folder}"
    batch = f", batch {run.partial['position'] + 1}" if run.partial else ""
    return f"resuming SSL pretraining from epoch {run.epoch + 1}{batch} of {epochs} (state in {folder})"


def ssl_epoch(run: SSLRun, images: np.ndarray, positives: np.ndarray, stats: tuple[float, float], cfg: SSLConfig,
              device: torch.device, progress: bool, stop: StopRequest | None, resume: ResumeStore | None) -> None:
    """Train one epoch (or the rest of a stopped one), append its history row and save the resume
    state; on a stop request, save where the epoch stood and stop."""
    epoch, steps, (mean, std) = run.epoch + 1, run.steps_per_epoch, stats
    if run.partial is None:
        order = torch.randperm(len(positives), generator=run.generator)[:steps * cfg.batch_size]
        run.partial = {"order": order, "position": 0, "losses": [], "scores": []}
    done, started = run.partial, time.perf_counter()
    batches = done["order"].view(steps, cfg.batch_size)[done["position"]:]
    bar = progress_bar(batches, disable=not progress, leave=False, desc=f"ssl {cfg.method} {epoch}/{cfg.epochs}",
                       every=0.25)
    for batch in bar:
        chosen = positives[batch.numpy()]
        unique, inverse = np.unique(chosen, return_inverse=True)
        x = torch.from_numpy(images[unique]).to(device).unsqueeze(1).float().div_(255)
        inverse = torch.from_numpy(inverse.reshape(chosen.shape)).to(device)
        views = [(v - mean) / std for v in make_views(x, inverse[:, 0], inverse[:, 1], run.method.small_views, cfg,
                                                       run.generator)]
        loss, embeddings = run.method.loss(views, run.step, cfg.epochs * steps)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        run.step += 1
        done["position"] += 1
        done["losses"].append(loss.item())
        done["scores"].append(collapse_check(embeddings, cfg.collapse_ratio)[0])
        bar.set_postfix(loss=f"{done['losses'][-1]:.4f}", std=f"{done['scores'][-1]:.3f}")
        if stop is not None and stop.signal is not None and done["position"] < steps:
            resume.save(ssl_snapshot(run))
            write_line(f"stopped in SSL epoch {epoch} after batch {done['position']}; state saved to {resume.folder}: "
                       "the same run resumes there")
            stop.stop()
    seconds = time.perf_counter() - started
    run.history.append({"epoch": epoch, "loss": float(np.mean(done["losses"])),
                        "embedding_std": float(np.mean(done["scores"])),
                        "collapsed": bool(np.mean(done["scores"]) < cfg.collapse_ratio),
                        "lr": float(run.scheduler.get_last_lr()[0]), "seconds": seconds,
                        "images_per_s": len(batches) * cfg.batch_size / seconds})
    run.epoch, run.partial = epoch, None
    if resume is not None:
        resume.save(ssl_snapshot(run))
        if stop is not None and stop.signal is not None and run.epoch < cfg.epochs:
            write_line(f"stopped after SSL epoch {epoch}; state saved to {resume.folder}: the same run resumes there")
            stop.stop()


def with_target(images: np.ndarray, target: np.ndarray, pairs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The SSL pool for domain-adaptive pretraining: ``images`` followed by a target site's
    unlabelled ``target`` images; nearest-neighbour ``pairs`` (indices into ``images``) gain
    each target image paired with itself, so it is seen as two views of one image."""
    pool = concat_images([images, target])
    if pairs is None:
        return pool, None
    extra = np.arange(len(images), len(pool), dtype=pairs.dtype if len(pairs) else np.int64)
    return pool, np.concatenate([pairs.reshape(-1, 2), np.stack([extra, extra], 1)])
