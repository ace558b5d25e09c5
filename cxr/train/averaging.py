"""Weight averaging during fine-tune: none, EMA (timm's ``ModelEmaV3``) or SWA (torch's
``AveragedModel`` over the last epochs); the averaged weights are the ones evaluated and
checkpointed.

Averaged weights sit in wider, flatter minima than the last step's (Izmailov et al., SWA,
2018), which is what a model needs at a site whose images differ a little from training.
"""

from __future__ import annotations

import numpy as np
from timm.utils import ModelEmaV3
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from cxr.registry import Registry
from cxr.runtime import to_input

AVERAGING = Registry("weight averaging")
AveragingName = AVERAGING.choice()


class NoAverage:
    """The trained weights as they are."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """Nothing to track."""

    def end_epoch(self, model: nn.Module, epoch: int, images: np.ndarray, mean: float, std: float) -> bool:
        """True: every epoch's weights are candidates for the checkpoint."""
        return True

    def weights(self, model: nn.Module) -> nn.Module:
        return model

    def state_dict(self) -> dict:
        """The averaged weights so far, to resume from."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""


class ExponentialAverage(NoAverage):
    """An exponential moving average of weights and buffers after every optimizer step, with
    timm's warm-up (decay grows from 0 towards ``decay``, so short runs average their late
    steps and not their random start)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool):
        self.ema = ModelEmaV3(model, decay=decay, use_warmup=warmup)

    def after_step(self, model: nn.Module, step: int) -> None:
        self.ema.update(model, step)

    def weights(self, model: nn.Module) -> nn.Module:
        return self.ema.module

    def state_dict(self) -> dict:
        return {"ema": self.ema.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.ema.module.load_state_dict(state["ema"])


class StochasticAverage(NoAverage):
    """An equal-weight average of the weights at the end of each of the last ``epochs``
    epochs; BatchNorm statistics are then re-estimated on the un-augmented train images,
    since averaged weights do not match any epoch's statistics."""

    def __init__(self, model: nn.Module, epochs: int, total_epochs: int):
        self.start = max(total_epochs - epochs + 1, 1)
        self.swa = AveragedModel(model)

    def end_epoch(self, model: nn.Module, epoch: int, images: np.ndarray, mean: float, std: float) -> bool:
        if epoch < self.start:
            return False
        self.swa.update_parameters(model)
        device = next(model.parameters()).device
        batches = (to_input(images[i:i + 64], mean, std, device) for i in range(0, len(images), 64))
        update_bn(batches, self.swa.module, device)
        return True

    def weights(self, model: nn.Module) -> nn.Module:
        return self.swa.module if self.swa.n_averaged.item() else model

    def state_dict(self) -> dict:
        return {"swa": self.swa.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.swa.load_state_dict(state["swa"])


@AVERAGING.register("none")
def no_average(model: nn.Module, total_epochs: int) -> NoAverage:
    return NoAverage()


@AVERAGING.register("ema")
def ema(model: nn.Module, total_epochs: int, ema_decay: float = 0.998, ema_warmup: bool = True) -> NoAverage:
    return ExponentialAverage(model, ema_decay, ema_warmup)


@AVERAGING.register("swa")
def swa(model: nn.Module, total_epochs: int, swa_epochs: int = 3) -> NoAverage:
    return StochasticAverage(model, swa_epochs, total_epochs)


def create_averaging(name: str, model: nn.Module, total_epochs: int, **knobs) -> NoAverage:
    """The named weight averaging of ``model`` (knobs it does not take are ignored)."""
    return AVERAGING.create_from(name, model, total_epochs, knobs=knobs)
