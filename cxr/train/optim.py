"""Optimizers, learning-rate schedules and class-balanced sampling weights.

Optimizers and schedules are registries: each entry takes the knobs it needs by their
``TrainConfig`` names, so adding one touches this file only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from cxr.data.split import label_groups
from cxr.registry import Registry

if TYPE_CHECKING:
    from cxr.train.config import TrainConfig

OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("scheduler")
register_optimizer = OPTIMIZERS.register
register_schedule = SCHEDULES.register
OptimizerName = OPTIMIZERS.choice()
ScheduleName = SCHEDULES.choice()
MIN_ONECYCLE_STEPS = 10
ParamGroups = list[dict]


@register_optimizer("adamw")
def adamw(groups: ParamGroups, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr)


@register_optimizer("sgd")
def sgd(groups: ParamGroups, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD, Nesterov whenever there is momentum."""
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)


@register_optimizer("rmsprop")
def rmsprop(groups: ParamGroups, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(groups, lr=lr, momentum=momentum)


def create_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over the trainable parameters; no weight decay on norms and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return OPTIMIZERS.create_from(cfg.optimizer, groups, knobs=cfg.model_dump())


class Schedule:
    """One interface over torch schedulers: ``step_batch`` each batch, ``step_epoch`` each epoch."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None):
        self.scheduler = scheduler

    def step_batch(self) -> None:
        """After each optimizer step."""

    def step_epoch(self, val_auc: float) -> None:
        """After each epoch's validation."""

    def state_dict(self) -> dict:
        """The torch scheduler's state and this wrapper's counters, to resume from."""
        own = {k: v for k, v in vars(self).items() if k != "scheduler" and isinstance(v, (bool, int, float))}
        return {"scheduler": self.scheduler.state_dict() if self.scheduler is not None else None, "own": own}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        vars(self).update(state["own"])


@register_schedule("none")
class ConstantSchedule(Schedule):
    """The optimizer's lr throughout."""

    def __init__(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
        super().__init__()


@register_schedule("onecycle")
class OneCycleSchedule(Schedule):
    """OneCycleLR over the whole run, stepped per batch, 20% warm-up."""

    def __init__(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, lr: float, epochs: int):
        # OneCycleLR needs a warm-up phase of at least one step (pct_start * total >= 2)
        total = max(epochs * steps_per_epoch, MIN_ONECYCLE_STEPS)
        super().__init__(torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.2))

    def step_batch(self) -> None:
        self.scheduler.step()


@register_schedule("cosine_restarts")
class CosineRestartsSchedule(Schedule):
    """Cosine annealing with warm restarts, the first cycle ``restart_epochs`` long, stepped per batch."""

    def __init__(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, restart_epochs: int = 5):
        super().__init__(torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=restart_epochs))
        self.steps_per_epoch, self.batches = steps_per_epoch, 0

    def step_batch(self) -> None:
        self.batches += 1
        self.scheduler.step(self.batches / self.steps_per_epoch)


@register_schedule("plateau")
class PlateauSchedule(Schedule):
    """lr x 0.3 after ``plateau_patience`` epochs without a val AUC gain."""

    def __init__(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, plateau_patience: int = 2):
        super().__init__(torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.3,
                                                                    patience=plateau_patience))

    def step_epoch(self, val_auc: float) -> None:
        if np.isfinite(val_auc):
            self.scheduler.step(val_auc)


def create_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Schedule:
    """The ``cfg.scheduler`` schedule of ``optimizer`` for epochs of ``steps_per_epoch`` batches."""
    return SCHEDULES.create_from(cfg.scheduler, optimizer, steps_per_epoch, knobs=cfg.model_dump())


def balanced_sample_weights(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-image weights giving each ``label_groups`` stratum equal total weight.

    For one binary label that is inverse class frequency.
    """
    _, inverse, counts = np.unique(label_groups(labels, mask), return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse]
    return weights / weights.sum()
