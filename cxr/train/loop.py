"""The supervised fine-tune loop: in-memory uint8 batches, batched augmentation, early stopping.

Images stay a uint8 array; each batch is indexed, moved to the device as uint8, then
augmented and normalised there. The best epoch by mean val AUC is kept as a checkpoint.
Given an ``Accelerator`` with several processes (``cxr.train.distributed``), each process
trains on its stride of the epoch order through DDP and predicts its share of val.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.utils.data import WeightedRandomSampler

from cxr.data.imageset import ImageSet
from cxr.data.split import check_val_classes
from cxr.errors import DataError
from cxr.infer.predict import predict_proba
from cxr.metrics.classification import mean_auc
from cxr.models.checkpoint import BackboneCheckpoint, Checkpoint, CheckpointMeta, cpu_state
from cxr.models.classifier import Classifier, ModelConfig
from cxr.progress import progress_bar, write_line
from cxr.runtime import deterministic, image_stats, resolve_device
from cxr.train.augment import augment_batch
from cxr.train.averaging import NoAverage, create_averaging
from cxr.train.config import TrainConfig
from cxr.train.losses import MaskedBCELoss, create_loss
from cxr.train.mixing import mix_batch
from cxr.train.optim import Schedule, balanced_sample_weights, create_optimizer, create_schedule
from cxr.train.resume import ResumeStore, StopRequest, plain, rng_state, set_rng_state


@dataclass
class FitResult:
    """The best checkpoint and one history row per epoch."""

    checkpoint: Checkpoint
    history: pd.DataFrame


def check_fit_inputs(train: ImageSet, val: ImageSet, proxy: ImageSet | None, cfg: TrainConfig) -> None:
    """Raise a DataError if the sets cannot be trained and validated on."""
    if cfg.select_on == "proxy" and proxy is None:
        raise DataError("train.select_on is 'proxy' but there is no proxy split: set split.proxy")
    parts = (("train", train), ("val", val)) + ((("proxy", proxy),) if proxy is not None else ())
    for name, part in parts:
        if part.images is None:
            raise DataError(f"the {name} set has no decoded images: run preprocess first")
        if len(part) == 0:
            raise DataError(f"the {name} set is empty")
        if part.label_names != train.label_names:
            raise DataError(f"train labels {train.label_names} differ from {name} labels {part.label_names}")
    check_val_classes(val)
    if proxy is not None:
        check_val_classes(proxy, "proxy")


def load_backbone(model: Classifier, init: BackboneCheckpoint) -> None:
    """Copy pretrained backbone weights into ``model``; the architectures must match."""
    name = model.backbone.default_cfg.get("architecture") or type(model.backbone).__name__
    if init.meta.backbone != name:
        raise ValueError(f"the pretrained backbone is {init.meta.backbone!r} but the model uses {name!r}")
    model.backbone.load_state_dict(init.state_dict)


def batches(order: torch.Tensor, batch_size: int) -> Iterator[np.ndarray]:
    """Index batches of ``order``; a trailing batch of one is dropped (BatchNorm needs two)."""
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size].numpy()
        if len(idx) > 1:
            yield np.sort(idx)


def epoch_order(n: int, weights: np.ndarray | None, generator: torch.Generator,
                size: int | None = None) -> torch.Tensor:
    """``size`` (default n) row indices: back-to-back shuffled permutations, or a
    WeightedRandomSampler draw (with replacement) when weighted."""
    size = size or n
    if weights is None:
        rounds = -(-size // n)
        return torch.cat([torch.randperm(n, generator=generator) for _ in range(rounds)])[:size]
    sampler = WeightedRandomSampler(weights.tolist(), size, replacement=True, generator=generator)
    return torch.tensor(list(sampler))


def all_negative(train: ImageSet) -> np.ndarray:
    """True for rows with no known positive label."""
    return ~((train.labels > 0.5) & train.mask).any(axis=1)


def rows_per_epoch(train: ImageSet, cfg: TrainConfig) -> int:
    """Rows one epoch draws: all of them, or fewer under negative undersampling, or ``samples_per_epoch``."""
    if cfg.samples_per_epoch:
        return cfg.samples_per_epoch
    negatives = int(all_negative(train).sum())
    return len(train) - negatives + math.ceil(cfg.negative_keep_fraction * negatives)


def epoch_rows(train: ImageSet, fraction: float, generator: torch.Generator) -> np.ndarray:
    """Row indices eligible this epoch: every row with a known positive plus a fresh random
    ``fraction`` of the all-negative rows."""
    if fraction >= 1:
        return np.arange(len(train))
    negative = all_negative(train)
    negatives = np.flatnonzero(negative)
    keep = torch.randperm(len(negatives), generator=generator)[:math.ceil(fraction * len(negatives))].numpy()
    return np.sort(np.concatenate([np.flatnonzero(~negative), negatives[keep]]))


def val_loss(probs: np.ndarray, val: ImageSet) -> float:
    """Masked BCE of val probabilities (comparable across losses)."""
    logits = torch.logit(torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6))
    return float(MaskedBCELoss()(logits, torch.from_numpy(val.labels), torch.from_numpy(val.mask)))


@dataclass
class TrainState:
    """Everything one optimisation step needs besides the batch.

    ``net`` is what trains: the model itself, or its DDP wrapper under several processes.
    ``order_generator`` draws the epoch order, identical in every process; ``generator``
    draws augmentations, per process (with one process they are the same generator).
    """

    model: Classifier
    net: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    cfg: TrainConfig
    device: torch.device
    mean: float
    std: float
    generator: torch.Generator
    rng: np.random.Generator
    use_amp: bool
    amp_dtype: torch.dtype
    order_generator: torch.Generator
    average: NoAverage
    channels_last: bool
    accelerator: Accelerator | None = None
    steps_done: int = 0

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator else 0

    @property
    def world(self) -> int:
        return self.accelerator.num_processes if self.accelerator else 1

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights that are validated and checkpointed: the averaged ones, if any."""
        return self.average.weights(self.model)


def cpu_has_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 autocast
    is emulated and slower than float32."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def amp_settings(cfg: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    """Autocast on CUDA (bf16 where supported, else fp16, which needs a grad scaler), and bf16 on
    a CPU with native bf16 when ``cfg.cpu_bf16`` asks for it."""
    if device.type == "cuda":
        return cfg.amp, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if cfg.cpu_bf16 and not cpu_has_bf16():
        warnings.warn("train.cpu_bf16 is set but this CPU has no native bf16 (AVX512-BF16/AMX): "
                      "training in float32", stacklevel=2)
    return cfg.cpu_bf16 and cpu_has_bf16(), torch.bfloat16


def shard_rows(n: int, world: int) -> int:
    """Rows each of ``world`` processes trains on per epoch: an equal share, so every process
    runs the same number of steps (DDP synchronises each one)."""
    return n // world


def build_state(train: ImageSet, model_cfg: ModelConfig, cfg: TrainConfig,
                backbone_init: BackboneCheckpoint | None, accelerator: Accelerator | None = None,
                init: Checkpoint | None = None) -> TrainState:
    """Model (optionally from a pretrained backbone, or every weight and the normalisation of
    ``init``), loss, optimizer, schedule, weight averaging and RNGs."""
    device = accelerator.device if accelerator else resolve_device(cfg.device)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    model = Classifier(model_cfg, len(train.label_names), load_weights=init is None)
    if backbone_init is not None:
        load_backbone(model, backbone_init)
    if init is not None:
        model.load_state_dict(init.model_state)
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    mean, std = (init.meta.mean, init.meta.std) if init is not None else image_stats(train.images, seed=cfg.seed)
    loss_fn = create_loss(cfg.loss, train.labels, train.mask, **cfg.model_dump()).to(device)
    optimizer = create_optimizer(model, cfg)
    average = create_averaging(cfg.averaging, model, cfg.epochs, **cfg.model_dump())
    net = accelerator.prepare_model(model, device_placement=False) if world > 1 else model
    net = torch.compile(net) if cfg.compile else net
    steps = max(sum(1 for _ in batches(torch.arange(shard_rows(rows_per_epoch(train, cfg), world)),
                                       cfg.batch_size)), 1)
    use_amp, amp_dtype = amp_settings(cfg, device)
    scaler = torch.amp.GradScaler(enabled=use_amp and amp_dtype == torch.float16)
    generator = torch.Generator().manual_seed(cfg.seed + rank)
    order_generator = generator if world == 1 else torch.Generator().manual_seed(cfg.seed)
    return TrainState(model, net, loss_fn, optimizer, create_schedule(optimizer, cfg, steps), scaler, cfg, device, mean, std,
                      generator, np.random.default_rng(cfg.seed + rank), use_amp, amp_dtype, order_generator,
                      average, channels_last, accelerator)


def train_step(state: TrainState, train: ImageSet, idx: np.ndarray) -> float:
    """One augmented, mixed, (AMP) forward/backward/step on the rows ``idx``; returns the loss."""
    cfg, device = state.cfg, state.device
    x = torch.from_numpy(train.images[idx]).to(device, non_blocking=True).unsqueeze(1).float().div_(255)
    x = augment_batch(x, cfg.augment, state.generator).sub_(state.mean).div_(state.std)
    y = torch.from_numpy(train.labels[idx]).to(device)
    m = torch.from_numpy(train.mask[idx]).to(device)
    x, y, m = mix_batch(x, y, m, state.rng, cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob)
    if state.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=state.amp_dtype, enabled=state.use_amp):
        logits = state.net(x)
    loss = state.loss_fn(logits.float(), y, m)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss.item()}; lower lr")
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if cfg.grad_clip:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.schedule.step_batch()
    state.steps_done += 1
    state.average.after_step(state.model, state.steps_done)
    return loss.item()


@dataclass
class EpochProgress:
    """Where an epoch stopped: its batch order, batches done and the running loss, to resume it."""

    order: torch.Tensor
    position: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    seconds: float = 0.0


class Interrupted(Exception):
    """A stop was requested (SIGINT/SIGTERM) mid-epoch; carries where the epoch stood."""

    def __init__(self, progress: EpochProgress):
        super().__init__("training interrupted")
        self.progress = progress


def epoch_batches(state: TrainState, train: ImageSet, weights: np.ndarray | None) -> torch.Tensor:
    """This epoch's shuffled or weighted order of this process's rows."""
    rows = epoch_rows(train, state.cfg.negative_keep_fraction, state.order_generator)
    order = rows[epoch_order(len(rows), None if weights is None else weights[rows], state.order_generator,
                             state.cfg.samples_per_epoch).numpy()]
    return torch.from_numpy(order[:shard_rows(len(order), state.world) * state.world][state.rank::state.world])


def train_epoch(state: TrainState, train: ImageSet, weights: np.ndarray | None, desc: str,
                progress: bool, start: EpochProgress | None = None,
                stop: StopRequest | None = None) -> tuple[float, int, float]:
    """(mean train loss, images seen, seconds) of one pass over a shuffled or weighted order;
    over all processes when there are several. ``start`` resumes an epoch where it stopped; a
    requested ``stop`` raises Interrupted after the current step."""
    state.net.train()
    started = time.perf_counter()
    done = start or EpochProgress(epoch_batches(state, train, weights))
    chunks = list(batches(done.order, state.cfg.batch_size))
    bar = progress_bar(chunks[done.position:], desc=desc, disable=not progress, leave=False, every=0.25)
    for idx in bar:
        loss = train_step(state, train, idx)
        done.position, done.seen = done.position + 1, done.seen + len(idx)
        done.loss_sum += loss * len(idx)
        bar.set_postfix(loss=f"{loss:.4f}")
        if stop is not None and stop.signal is not None and done.position < len(chunks):
            done.seconds += time.perf_counter() - started
            raise Interrupted(done)
    loss_sum, seen = done.loss_sum, done.seen
    if state.world > 1:
        loss_sum, seen = state.accelerator.reduce(torch.tensor([loss_sum, seen], dtype=torch.float64,
                                                               device=state.device), "sum").tolist()
    return loss_sum / max(seen, 1), int(seen), done.seconds + time.perf_counter() - started


def evaluate_epoch(state: TrainState, parts: dict[str, ImageSet]) -> dict[str, float]:
    """``<part>_loss`` and ``<part>_auc`` (mean AUC) of the current weights on each part."""
    row = {}
    for name, part in parts.items():
        probs = predict_val(state, part)
        row |= {f"{name}_loss": val_loss(probs, part), f"{name}_auc": mean_auc(part.labels, probs, part.mask)}
    return row


def predict_val(state: TrainState, val: ImageSet) -> np.ndarray:
    """(N, L) val probabilities; under several processes each predicts a contiguous share with
    rank 0's BatchNorm statistics (the weights a checkpoint keeps) and the shares are gathered."""
    batch_size, model = state.cfg.batch_size * 2, state.evaluated
    if state.world == 1:
        return predict_proba(model, val.images, state.mean, state.std, batch_size, state.device)
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, src=0)
    share = np.array_split(np.arange(len(val)), state.world)[state.rank]
    probs = predict_proba(model, val.images[share], state.mean, state.std, batch_size, state.device)
    return np.concatenate([p for p in gather_object([probs]) if len(p)])


@dataclass
class LoopState:
    """What the epoch loop carries from one epoch to the next."""

    history: list[dict]
    best_state: dict | None = None
    best: dict | None = None
    stale: int = 0
    epoch: int = 0
    finished: bool = False
    partial: EpochProgress | None = None


def snapshot(state: TrainState, loop: LoopState, partial: EpochProgress | None = None) -> dict:
    """Everything ``restore`` needs to continue the run bit-identically."""
    return {"epoch": loop.epoch, "finished": loop.finished, "stale": loop.stale,
            "history": [plain(row) for row in loop.history], "best_state": loop.best_state,
            "best_epoch": loop.best["epoch"] if loop.best else None,
            "partial": None if partial is None else vars(partial).copy(),
            "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
            "schedule": state.schedule.state_dict(), "scaler": state.scaler.state_dict(),
            "average": state.average.state_dict(), "steps_done": state.steps_done,
            "generator": state.generator.get_state(), "order_generator": state.order_generator.get_state(),
            "numpy_generator": state.rng.bit_generator.state, "rng": rng_state()}


def restore(state: TrainState, saved: dict) -> LoopState:
    """Put a ``snapshot`` back into ``state``; returns the loop's place."""
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.schedule.load_state_dict(saved["schedule"])
    state.scaler.load_state_dict(saved["scaler"])
    state.average.load_state_dict(saved["average"])
    state.steps_done = saved["steps_done"]
    state.generator.set_state(saved["generator"])
    state.order_generator.set_state(saved["order_generator"])
    state.rng.bit_generator.state = saved["numpy_generator"]
    set_rng_state(saved["rng"])
    history = saved["history"]
    best = next((row for row in history if row["epoch"] == saved["best_epoch"]), None)
    partial = EpochProgress(**saved["partial"]) if saved["partial"] else None
    return LoopState(history, saved["best_state"], best, saved["stale"], saved["epoch"], saved["finished"], partial)


def fit(train: ImageSet, val: ImageSet, model_cfg: ModelConfig, cfg: TrainConfig,
        preprocess: dict | None = None, progress: bool = True,
        on_epoch: Callable[[dict], None] | None = None,
        backbone_init: BackboneCheckpoint | None = None, accelerator: Accelerator | None = None,
        proxy: ImageSet | None = None, init: Checkpoint | None = None,
        resume: ResumeStore | None = None) -> FitResult:
    """Train a classifier on ``train``, validate each epoch on ``val`` (and ``proxy``, when
    given), keep the best epoch by the mean AUC of the ``cfg.select_on`` split.

    ``on_epoch`` receives each epoch's history row (e.g. to log it to a tracker).
    ``backbone_init`` (e.g. from SSL pretraining) initialises the backbone; with
    ``model_cfg.freeze_backbone`` only the head is trained on top of it. ``accelerator``
    (set up by ``cxr.train.distributed``) trains data-parallel; every process then returns
    the same result. ``init`` continues from a trained checkpoint (weights and normalisation),
    e.g. for self-training. Under ``cfg.averaging`` the averaged weights are validated and
    checkpointed; SWA's candidates are only the epochs it has averaged.

    With ``resume``, the loop continues from the state saved there (replaying the saved epochs'
    rows to ``on_epoch``), saves its state after every epoch, and on SIGINT/SIGTERM after the
    current step before it stops; the result is the same as an uninterrupted run's. The caller
    clears the store once the result is safe.
    """
    check_fit_inputs(train, val, proxy, cfg)
    parts = {"val": val} | ({"proxy": proxy} if proxy is not None else {})
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    with deterministic(cfg.seed), (StopRequest() if resume is not None else contextlib.nullcontext()) as stop:
        state = build_state(train, model_cfg, cfg, backbone_init, accelerator, init)
        weights = balanced_sample_weights(train.labels, train.mask) if cfg.balanced_sampler else None
        saved = resume.load() if resume is not None else None
        loop = restore(state, saved) if saved is not None else LoopState([])
        if saved is not None:
            write_line(resumed_from(loop, cfg.epochs, resume.folder))
            for row in loop.history if on_epoch is not None else []:
                on_epoch(row)
        while not loop.finished and loop.epoch < cfg.epochs:
            run_epoch(state, loop, train, weights, parts, progress, on_epoch, stop, resume)
        if stop is not None and stop.signal is not None:
            stop.stop()  # the signal came in the last step: the finished state is saved, so a re-run returns at once
    frame = pd.DataFrame(loop.history).assign(kept=[row is loop.best for row in loop.history])
    return FitResult(best_checkpoint(state, loop.best_state, loop.best, model_cfg, train, preprocess), frame)


def resumed_from(loop: LoopState, epochs: int, folder) -> str:
    """The one log line that says where a resumed run goes on from."""
    if loop.finished:
        return f"training had finished: {loop.epoch} epochs restored from {folder}"
    batch = f", batch {loop.partial.position + 1}" if loop.partial else ""
    return f"resuming training from epoch {loop.epoch + 1}{batch} of {epochs} (state in {folder})"


def run_epoch(state: TrainState, loop: LoopState, train: ImageSet, weights: np.ndarray | None,
              parts: dict[str, ImageSet], progress: bool, on_epoch: Callable[[dict], None] | None,
              stop: StopRequest | None, resume: ResumeStore | None) -> None:
    """Train, validate and keep-or-not one epoch, then save the resume state; on a stop request,
    save where the epoch stood and stop."""
    cfg, epoch, select = state.cfg, loop.epoch + 1, f"{state.cfg.select_on}_auc"
    try:
        train_loss, seen, seconds = train_epoch(state, train, weights, f"epoch {epoch}/{cfg.epochs}", progress,
                                                loop.partial, stop)
    except Interrupted as interrupted:
        resume.save(snapshot(state, loop, interrupted.progress))
        write_line(f"stopped in epoch {epoch} after batch {interrupted.progress.position}; state saved to "
                   f"{resume.folder}: the same run resumes there")
        stop.stop()
    loop.partial = None
    candidate = state.average.end_epoch(state.model, epoch, train.images, state.mean, state.std)
    row = {"epoch": epoch, "train_loss": train_loss, **evaluate_epoch(state, parts),
           "lr": state.optimizer.param_groups[0]["lr"], "train_seconds": seconds,
           "train_images_per_s": seen / seconds, "averaged": cfg.averaging != "none" and candidate}
    loop.history.append(row)
    if on_epoch is not None:
        on_epoch(row)
    if progress:
        write_line(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if candidate and (loop.best is None or row[select] > loop.best[select]):
        loop.best_state, loop.best, loop.stale = cpu_state(state.evaluated), row, 0
    else:
        loop.stale += 1
    state.schedule.step_epoch(row[select])
    loop.epoch = epoch
    patience = cfg.early_stopping_patience
    loop.finished = epoch == cfg.epochs or bool(patience and loop.stale >= patience)
    if resume is not None:
        resume.save(snapshot(state, loop))
        if stop is not None and stop.signal is not None and not loop.finished:
            write_line(f"stopped after epoch {epoch}; state saved to {resume.folder}: the same run resumes there")
            stop.stop()


def best_checkpoint(state: TrainState, best_state: dict, best: dict, model_cfg: ModelConfig,
                    train: ImageSet, preprocess: dict | None) -> Checkpoint:
    """The best candidate epoch's weights (history row ``best``) with the metadata needed to
    rebuild and apply them."""
    state.model.load_state_dict(best_state)
    scores = {k: v for k, v in best.items() if k.endswith(("_auc", "_loss")) and k != "train_loss"}
    meta = CheckpointMeta(model=model_cfg, image_size=int(train.images.shape[1]),
                          label_names=list(train.label_names), mean=state.mean, std=state.std, epoch=best["epoch"],
                          val_metrics=scores, preprocess=preprocess or {})
    return Checkpoint.from_model(state.model.cpu(), meta)
