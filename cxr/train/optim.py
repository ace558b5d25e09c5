"""Optimizers, learning-rate schedules and class-balanced sampling weights."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cxr.data.split import label_groups
from cxr.train.config import TrainConfig


MIN_ONECYCLE_STEPS = 10


def create_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, SGD (Nesterov) or RMSprop over the trainable parameters; no decay on norms and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)


class Schedule:
    """One interface over torch schedulers: ``step_batch`` each batch, ``step_epoch`` each epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        self.kind, self.steps_per_epoch = cfg.scheduler, steps_per_epoch
        self.batches = 0
        if cfg.scheduler == "onecycle":
            # OneCycleLR needs a warm-up phase of at least one step (pct_start * total >= 2)
            total = max(cfg.epochs * steps_per_epoch, MIN_ONECYCLE_STEPS)
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total,
                                                                 pct_start=0.2)
        elif cfg.scheduler == "cosine_restarts":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                optimizer, T_0=cfg.restart_epochs)
        elif cfg.scheduler == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=0.3, patience=cfg.plateau_patience)
        else:
            self.scheduler = None

    def step_batch(self) -> None:
        self.batches += 1
        if self.kind == "onecycle":
            self.scheduler.step()
        elif self.kind == "cosine_restarts":
            self.scheduler.step(self.batches / self.steps_per_epoch)

    def step_epoch(self, val_auc: float) -> None:
        if self.kind == "plateau" and np.isfinite(val_auc):
            self.scheduler.step(val_auc)


def balanced_sample_weights(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-image weights giving each ``label_groups`` stratum equal total weight.

    For one binary label that is inverse class frequency.
    """
    _, inverse, counts = np.unique(label_groups(labels, mask), return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse]
    return weights / weights.sum()
