"""A real training run in its own process, for the kill-and-resume tests:

    python -m tests.reliability.fit_worker DATA_DIR OUT_DIR [RESUME_DIR] [key=value ...]

trains on DATA_DIR/train and DATA_DIR/val (saved ImageSets) and writes the checkpoint to OUT_DIR;
with RESUME_DIR it resumes from, and saves its state to, that folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cxr.data.imageset import load_imageset
from cxr.models.checkpoint import save_checkpoint
from cxr.models.classifier import ModelConfig
from cxr.train.config import TrainConfig
from cxr.train.loop import fit
from cxr.train.resume import ResumeStore

if __name__ == "__main__":
    data, out, resume = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "-"
    overrides = dict(arg.split("=", 1) for arg in sys.argv[4:])
    cfg = TrainConfig(**({"epochs": 4, "batch_size": 8, "amp": False, "lr": 0.003} | overrides))
    store = ResumeStore(resume, "test-fingerprint") if resume != "-" else None
    result = fit(load_imageset(str(data / "train")), load_imageset(str(data / "val")), ModelConfig(backbone="resnet18"),
                 cfg, progress=True, resume=store)
    save_checkpoint(result.checkpoint, out)
