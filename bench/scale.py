"""Memory and speed from 10k to 112k images: ingest, split, preprocess into shards, one capped epoch,
TTA on a capped subset, each step in its own process, as a pipeline's steps run.

    python bench/scale.py --out DIR [--sizes 10000,50000,112120] [--format png] [--keep]

Generates an NIH-sized image folder once: the ids, patients and findings of the first N rows of
the real ``Data_Entry_2017`` table (``../shared/data/nih-labels``), each image a jittered copy of
a real X-ray from ``../shared/data`` (Kermany and nih1000: rotation, scale, shift, exposure)
stored at 256 px. Each step reads its input from DIR and writes its output there in the one
ImageSet format (what the materializer stores), so a step's peak RSS is its own process's.
Prints one JSON line per step and size (wall s, images/s, peak RSS MB, artifact MB) and a
summary line with the targets: RSS growth 10k -> 112k per step, preprocess images/s, and the
store's training images/s against the same rows in memory at the smallest size. Deletes what it
generated unless ``--keep``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxr.data.ingest import data_dir

STEPS = ("ingest", "split", "preprocess", "train", "train_memory", "tta")
SIDE, IMAGE_SIZE, BACKBONE, BATCH, TRAIN_STEPS, VAL_IMAGES, TTA_IMAGES = 256, 224, "resnet10t", 32, 12, 128, 512


def source_images(limit: int = 1500) -> list[np.ndarray]:
    """Real X-rays to jitter: Kermany train images and nih1000 images, gray, at 256 px."""
    root = data_dir()
    files = sorted((root / "kermany-pneumonia-224" / "train").rglob("*.jpeg"))[::3][:limit - 300]
    files += sorted((root / "nih1000-64" / "images").glob("*.png"))[:300]
    return [cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
            for f in files]


def jittered(source: np.ndarray, seed: int) -> np.ndarray:
    """``source`` rotated (±6°), scaled (0.92-1.08), shifted (±10 px) and re-exposed, reproducibly."""
    rng = np.random.default_rng(seed)
    matrix = cv2.getRotationMatrix2D((SIDE / 2, SIDE / 2), rng.uniform(-6, 6), rng.uniform(0.92, 1.08))
    matrix[:, 2] += rng.uniform(-10, 10, 2)
    image = cv2.warpAffine(source, matrix, (SIDE, SIDE), borderMode=cv2.BORDER_REFLECT)
    return cv2.convertScaleAbs(image, alpha=rng.uniform(0.85, 1.15), beta=rng.uniform(-15, 15))


def generate(folder: Path, sizes: list[int], fmt: str) -> dict:
    """``folder/images`` with the first ``max(sizes)`` NIH ids as jittered real X-rays, and the table of
    the first n rows, ``folder/Data_Entry-<n>.csv``, for each size."""
    n = max(sizes)
    table = pd.read_csv(data_dir() / "nih-labels" / "Data_Entry_2017_v2020.csv.gz", dtype=str).head(n)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    sources = source_images()
    names = [Path(name).with_suffix("." + fmt).name for name in table["Image Index"]]
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1] if fmt == "png" else [cv2.IMWRITE_JPEG_QUALITY, 90]

    def write(i: int) -> None:
        seed = int.from_bytes(hashlib.blake2b(names[i].encode(), digest_size=4).digest(), "little")
        cv2.imwrite(str(images / names[i]), jittered(sources[seed % len(sources)], seed), params)

    started = time.perf_counter()
    cv2.setNumThreads(1)
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write, [i for i in range(n) if not (images / names[i]).exists()]))
    table = table.assign(**{"Image Index": names})
    for size in sizes:
        table.head(size).to_csv(folder / f"Data_Entry-{size}.csv", index=False)
    return {"generated": n, "seconds": round(time.perf_counter() - started, 1),
            "disk_mb": round(folder_bytes(images) / 2**20)}


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def run_step(step: str, work: Path, n: int) -> dict:
    """Run ``step`` in a child process; its figures plus the child's wall time and peak RSS."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "step", step, str(work), str(n)], stdout=subprocess.PIPE,
                             text=True, env=os.environ | {"CXR_SCRATCH_DIR": str(work / "scratch")})
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"step {step} at {n} images failed (exit {os.waitstatus_to_exitcode(status)})")
    figures = json.loads(out.strip().splitlines()[-1])
    return {"bench": "scale", "images": n, "step": step, "wall_s": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), **figures}


def step_main(step: str, work: Path, n: int) -> None:
    """One step in this process: read its input from ``work``, write its output there, print figures."""
    import torch

    from cxr.data.imageset import load_imageset, save_imageset
    from cxr.data.label_tables import read_nih_table
    from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
    from cxr.data.split import SplitConfig, split_train_val
    from cxr.infer.tta import predict_imageset
    from cxr.models.checkpoint import load_checkpoint, save_checkpoint
    from cxr.models.classifier import ModelConfig
    from cxr.train.config import TrainConfig
    from cxr.train.loop import fit

    def stored(name: str) -> Path:
        folder = work / f"{name}-{n}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    started, figures = time.perf_counter(), {}
    if step == "ingest":
        data = read_nih_table(work / "gen" / f"Data_Entry-{n}.csv", work / "gen" / "images")
        save_imageset(data, str(stored("ingest")))
    elif step == "split":
        data = split_train_val(load_imageset(str(work / f"ingest-{n}")), SplitConfig(val_fraction=0.15))
        save_imageset(data, str(stored("split")))
    elif step == "preprocess":
        data = preprocess_imageset(load_imageset(str(work / f"split-{n}")),
                                   PreprocessConfig(image_size=IMAGE_SIZE, storage="shards"), progress=False)
        folder = stored("preprocess")
        save_imageset(data, str(folder))
        figures["artifact_mb"] = round(folder_bytes(folder) / 2**20)
    elif step in ("train", "train_memory"):
        data = load_imageset(str(work / f"preprocess-{n}"))
        train, val = data.split("train"), data.split("val")
        val = val.subset(np.arange(min(VAL_IMAGES, len(val))))
        if step == "train_memory":
            train = train.with_images(np.asarray(train.images))
        torch.manual_seed(0)
        started = time.perf_counter()
        result = fit(train, val, ModelConfig(backbone=BACKBONE), TrainConfig(
            epochs=1, batch_size=BATCH, samples_per_epoch=BATCH * TRAIN_STEPS, num_threads=os.cpu_count()),
            progress=False)
        figures["train_images_per_s"] = round(BATCH * TRAIN_STEPS / (time.perf_counter() - started), 1)
        if step == "train":
            save_checkpoint(result.checkpoint, stored("checkpoint"))
    elif step == "tta":
        data = load_imageset(str(work / f"preprocess-{n}")).split("val")
        data = data.subset(np.arange(min(TTA_IMAGES, len(data))))
        predict_imageset(load_checkpoint(work / f"checkpoint-{n}"), data, ["original", "hflip"])
    seconds = time.perf_counter() - started
    figures["step_images_per_s"] = round((BATCH * TRAIN_STEPS if step.startswith("train") else
                                          min(n, TTA_IMAGES) if step == "tta" else n) / seconds, 1)
    print(json.dumps(figures), flush=True)


def summary(rows: list[dict], sizes: list[int]) -> dict:
    by = {(r["images"], r["step"]): r for r in rows}
    small, large = min(sizes), max(sizes)
    growth = {step: by[(large, step)]["peak_rss_mb"] - by[(small, step)]["peak_rss_mb"] for step in STEPS
              if (large, step) in by and (small, step) in by}
    preprocess = min(by[(n, "preprocess")]["step_images_per_s"] for n in sizes)
    store = by[(small, "train")]["train_images_per_s"] / by[(small, "train_memory")]["train_images_per_s"]
    return {"bench": "scale", "summary": True, "rss_growth_mb": growth, "rss_growth_ok": max(growth.values()) < 500,
            "preprocess_images_per_s_min": preprocess, "preprocess_ok": preprocess >= 1000,
            "train_store_vs_memory": round(store, 3), "train_store_ok": store >= 0.9}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "step":
        step_main(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--sizes", default="10000,50000,112120")
    parser.add_argument("--format", choices=("png", "jpg"), default="png")
    parser.add_argument("--keep", action="store_true", help="keep the generated images and artifacts")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        print(json.dumps({"bench": "scale", "step": "generate", **generate(args.out / "gen", sizes, args.format)}),
              flush=True)
        for n in sizes:
            for step in STEPS:
                if step == "train_memory" and n != sizes[0]:
                    continue
                rows.append(run_step(step, args.out, n))
                print(json.dumps(rows[-1]), flush=True)
            for name in ("ingest", "split", "preprocess", "checkpoint"):
                shutil.rmtree(args.out / f"{name}-{n}", ignore_errors=True)
        print(json.dumps(summary(rows, sizes)), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
