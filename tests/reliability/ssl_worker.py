"""A real SSL pretraining run in its own process, for the stop-and-resume test:

    python -m tests.reliability.ssl_worker IMAGES.npy OUT_DIR [RESUME_DIR] [key=value ...]

pretrains resnet10t on the uint8 (N, H, W) images (two views of each) and writes the backbone
to OUT_DIR; with RESUME_DIR it resumes from, and saves its state to, that folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cxr.models.checkpoint import save_checkpoint
from cxr.ssl.pretrain import SSLConfig, pretrain
from cxr.train.resume import ResumeStore

if __name__ == "__main__":
    images, out, resume = np.load(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "-"
    overrides = dict(arg.split("=", 1) for arg in sys.argv[4:])
    cfg = SSLConfig(**({"epochs": 2, "batch_size": 8, "positives": "two_views", "hidden_dim": 64, "out_dim": 32}
                       | overrides))
    store = ResumeStore(resume, "test-fingerprint") if resume != "-" else None
    backbone, _ = pretrain(images, "resnet10t", cfg, progress=True, resume=store)
    save_checkpoint(backbone, out)
