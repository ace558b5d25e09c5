"""Batch drift gate: false alarms on clean batches and detection of shifted ones, per test.

    python bench/drift.py --out DIR [--sizes 30,100] [--repeats 20]

Uses the default config's trained checkpoint from ``bench/generalisation.py``'s cache in DIR
(``--variants default-base`` trains it if absent). The val reference is fitted on one half of
val (seeded); batches of each size are drawn from: the other half (clean: every alarm is a
false one), the proxy split (the same hospital's later patients), the Kermany test folder
(the held-out site the submission is scored on), that clean half under five acquisition
corruptions at severity 3, and NIH ChestX-ray14 images (another dataset). One JSON line per
source and size: the share of batches each test flagged and any test flagged, and the
seconds per check.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from bench.generalisation import cached_set, trained, variant_params
from cxr.data.corruptions import CORRUPTIONS
from cxr.data.ingest import data_dir
from cxr.data.preprocess import PreprocessConfig
from cxr.metrics.drift import DriftConfig, drift_report, fit_drift

SHIFTS = ("gaussian_noise", "gaussian_blur", "gamma", "jpeg", "invert")


def nih_images(size: int, count: int) -> np.ndarray:
    files = sorted((data_dir() / "nih1000-64" / "images").glob("*.png"))[:count]
    return np.stack([cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (size, size),
                                interpolation=cv2.INTER_LINEAR) for f in files])


def rates(checkpoint, images: np.ndarray, size: int, repeats: int, cfg: DriftConfig, seed: int) -> dict:
    """Share of ``repeats`` random batches of ``size`` that each test (and any test) flagged."""
    rng = np.random.default_rng(seed)
    flagged, seconds = [], []
    for _ in range(repeats):
        batch = images[rng.choice(len(images), min(size, len(images)), replace=False)]
        started = time.perf_counter()
        report = drift_report(checkpoint, batch, cfg, device="cpu")
        seconds.append(time.perf_counter() - started)
        flagged.append(dict(zip(report["test"], report["drifted"])))
    tests = {f"{t}_flagged": round(float(np.mean([f[t] for f in flagged])), 3) for t in cfg.tests}
    return {**tests, "any_flagged": round(float(np.mean([any(f.values()) for f in flagged])), 3),
            "seconds_per_check": round(float(np.median(seconds)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--sizes", default="30,100")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    spec = {"config": "default"}
    params = variant_params(spec)
    prep = PreprocessConfig(**params["preprocess"])
    data = cached_set(args.out, params["data"], params["split"], prep)
    test = cached_set(args.out, params["test_data"], None, prep)
    checkpoint, _ = trained(args.out, spec, params, data, test)
    val = data.split("val").images
    order = np.random.default_rng(0).permutation(len(val))
    reference, clean = val[order[: len(val) // 2]], val[order[len(val) // 2:]]
    cfg = DriftConfig()
    checkpoint = fit_drift(checkpoint, reference, cfg)
    rng = np.random.default_rng(1)
    sources = {"clean_val_half": clean, "proxy": data.split("proxy").images, "kermany_test": test.images,
               **{f"{name}_s3": CORRUPTIONS.create(name, clean, 3, rng) for name in SHIFTS},
               "nih1000": nih_images(prep.image_size, 400)}
    for name, images in sources.items():
        for size in (int(s) for s in args.sizes.split(",")):
            print(json.dumps({"bench": "drift", "source": name, "batch": size, "repeats": args.repeats,
                              "reference_images": len(reference),
                              **rates(checkpoint, images, size, args.repeats, cfg, seed=size)}), flush=True)


if __name__ == "__main__":
    main()
