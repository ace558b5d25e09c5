"""Data-parallel fine-tuning: ``fit`` in ``train.processes`` processes (one per GPU) per node.

``fit_data_parallel`` writes the train/val sets and configs to a scratch folder, starts the
processes with torchrun and reads back the rank-0 result (``cxr.train.cluster`` does the same
over ``train.nodes`` nodes through a Kubeflow PyTorchJob). Each process runs this module:
Accelerate sets up the process group (NCCL on GPUs, Gloo on CPU), the device and the DDP
wrapper, and ``fit`` does the rest. Images are memory-mapped (or read from shards), so N processes share one copy
in the page cache. ``train.processes == 1`` never comes here: ``fit`` runs in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd
from accelerate import Accelerator

from cxr.data.imageset import ImageSet, load_imageset, save_imageset
from cxr.models.checkpoint import BackboneCheckpoint, Checkpoint, load_checkpoint, save_checkpoint
from cxr.models.classifier import ModelConfig
from cxr.runtime import resolve_device
from cxr.train.config import TrainConfig
from cxr.train.loop import FitResult, check_fit_inputs, fit
from cxr.train.resume import ResumeStore

CONFIG, BACKBONE, RESULT, HISTORY = "config.json", "backbone", "checkpoint", "history.parquet"


def worker_command(folder: Path | str) -> list[str]:
    """The command each node runs: torchrun taking its rendezvous (nodes, node rank, master address,
    processes per node) from the ``PET_*`` variables that the launcher sets, running this module."""
    return ["python", "-m", "torch.distributed.run", "-m", __name__, str(folder)]


def launch_command(processes: int, folder: Path) -> list[str]:
    """torchrun on this host: ``processes`` workers running this module on ``folder``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", __name__, str(folder)]


def write_job(folder: Path, train: ImageSet, val: ImageSet, model_cfg: ModelConfig, cfg: TrainConfig,
              preprocess: dict | None, progress: bool, backbone_init: BackboneCheckpoint | None,
              proxy: ImageSet | None, resume: ResumeStore | None) -> None:
    """Everything the workers read, in ``folder``: the sets (shards stay shards), configs, SSL backbone."""
    for name, part in (("train", train), ("val", val), ("proxy", proxy)):
        if part is None:
            continue
        (folder / name).mkdir()
        save_imageset(part, str(folder / name))
    (folder / CONFIG).write_text(json.dumps({"model": model_cfg.model_dump(mode="json"),
                                             "train": cfg.model_dump(mode="json"),
                                             "preprocess": preprocess, "progress": progress,
                                             "resume": None if resume is None else
                                             [str(resume.folder), resume.fingerprint]}))
    if backbone_init is not None:
        save_checkpoint(backbone_init, folder / BACKBONE)


def read_result(folder: Path, on_epoch: Callable[[dict], None] | None) -> FitResult:
    """The rank-0 result the workers left in ``folder``, its history rows replayed to ``on_epoch``."""
    result = FitResult(load_checkpoint(folder / RESULT, Checkpoint), pd.read_parquet(folder / HISTORY))
    if on_epoch is not None:
        for row in result.history.to_dict("records"):
            on_epoch(row)
    return result


def fit_data_parallel(train: ImageSet, val: ImageSet, model_cfg: ModelConfig, cfg: TrainConfig,
                      preprocess: dict | None = None, progress: bool = True,
                      on_epoch: Callable[[dict], None] | None = None,
                      backbone_init: BackboneCheckpoint | None = None, proxy: ImageSet | None = None,
                      resume: ResumeStore | None = None) -> FitResult:
    """``fit`` in ``cfg.processes`` processes on this host; same arguments and result.

    The workers have no tracker, so ``on_epoch`` receives the history rows after training.
    A worker failure raises with its exit code; its traceback is on stderr above. With
    ``resume`` each process keeps its own state in a ``rank<i>`` subfolder; a store kept
    elsewhere (a remote artifact store) is pulled before the start and pushed when the workers end.
    """
    check_fit_inputs(train, val, proxy, cfg)
    with tempfile.TemporaryDirectory(prefix="cxr-ddp-") as scratch:
        folder = Path(scratch)
        write_job(folder, train, val, model_cfg, cfg, preprocess, progress, backbone_init, proxy, resume)
        if resume is not None:
            resume.pull()
        try:
            done = subprocess.run(launch_command(cfg.processes, folder), env=os.environ | {"PYTHONUNBUFFERED": "1"})
        finally:
            if resume is not None:
                resume.push()
        if done.returncode != 0:
            raise RuntimeError(f"data-parallel fine-tune with {cfg.processes} processes failed "
                               f"(torchrun exit {done.returncode}); the worker traceback is above")
        return read_result(folder, on_epoch)


def worker(folder: Path) -> None:
    """One torchrun process: fit on its share, rank 0 writes the result into ``folder``."""
    config = json.loads((folder / CONFIG).read_text())
    cfg = TrainConfig.model_validate(config["train"])
    accelerator = Accelerator(cpu=resolve_device(cfg.device).type == "cpu")
    backbone = load_checkpoint(folder / BACKBONE, BackboneCheckpoint) if (folder / BACKBONE).exists() else None
    parts = {name: load_imageset(str(folder / name), mmap=True) if (folder / name).exists() else None
             for name in ("train", "val", "proxy")}
    resume = None if config["resume"] is None else ResumeStore(*config["resume"]).rank(accelerator.process_index)
    result = fit(parts["train"], parts["val"], ModelConfig.model_validate(config["model"]), cfg,
                 preprocess=config["preprocess"], progress=config["progress"] and accelerator.is_main_process,
                 backbone_init=backbone, accelerator=accelerator, proxy=parts["proxy"], resume=resume)
    if accelerator.is_main_process:
        save_checkpoint(result.checkpoint, folder / RESULT)
        result.history.to_parquet(folder / HISTORY, index=False)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
