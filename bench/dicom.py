"""DICOM decode throughput per transfer syntax against PNG of the same pixels.

    python bench/dicom.py [--images 2000] [--distinct 50] [--side 2048] [--workers 2] [--max-seconds 0]

Real X-rays (``covid-fullres``, resized to ``--side`` px) are stored at 12 bits with window
tags in every transfer syntax of ``tests/dicom_files.py`` (JPEG baseline at 8 bits), and as
16-bit and 8-bit PNG. ``--distinct`` files per format are decoded in turn until ``--images``
decodes, on ``--workers`` threads as preprocessing runs them (files stay in the page cache,
so this measures decoding, not the disk); ``--max-seconds`` stops a slow format early and the
line says how many it decoded. One JSON line per format: images/s, MB on disk per image, and
the ratio to 16-bit PNG measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from cxr.data.decode import IMAGE_EXTENSIONS, decode_gray
from cxr.data.ingest import data_dir
from tests.dicom_files import TRANSFER_SYNTAXES, stored_values, write_dicom


def sources(side: int, count: int) -> list[np.ndarray]:
    """``count`` real chest X-rays as uint8 (side, side)."""
    files = sorted(p for p in (data_dir() / "covid-fullres").rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    return [cv2.resize(decode_gray(files[i % len(files)]), (side, side), interpolation=cv2.INTER_AREA)
            for i in range(count)]


def write_format(folder: Path, name: str, images: list[np.ndarray]) -> list[Path]:
    """Each image stored in format ``name`` (a transfer syntax, ``png16`` or ``png8``)."""
    folder.mkdir(parents=True)
    paths = []
    for i, image in enumerate(images):
        if name.startswith("png"):
            path = folder / f"{i:04d}.png"
            pixels = stored_values(image, 12, False, 1.0, 0.0).astype(np.uint16) if name == "png16" else image
            cv2.imwrite(str(path), pixels)
        else:
            bits = 8 if name == "jpeg_baseline" else 12
            path = write_dicom(folder / f"{i:04d}.dcm", image, name, bits=bits, window=bits > 8)
        paths.append(path)
    return paths


def throughput(paths: list[Path], images: int, workers: int, max_seconds: float = 0) -> tuple[float, int]:
    """Decodes per second, and decodes done, of up to ``images`` decodes cycling through ``paths``
    (fewer when ``max_seconds`` runs out), in chunks of ``workers * 8``."""
    decode_gray(paths[0])
    started, done, chunk = time.perf_counter(), 0, workers * 8
    with ThreadPoolExecutor(workers) as pool:
        while done < images and not (max_seconds and time.perf_counter() - started > max_seconds):
            count = min(chunk, images - done)
            list(pool.map(lambda i: decode_gray(paths[i % len(paths)]), range(done, done + count)))
            done += count
    return done / (time.perf_counter() - started), done


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--distinct", type=int, default=50)
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=0, help="per format; 0: no limit")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    images = sources(args.side, args.distinct)
    formats = ["png16", "png8", *TRANSFER_SYNTAXES]
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name in formats:
            paths = write_format(Path(tmp) / name, name, images)
            rate, done = throughput(paths, args.images, args.workers, args.max_seconds)
            results[name] = {"images_per_s": rate, "decodes": done,
                             "mb_per_image": sum(p.stat().st_size for p in paths) / len(paths) / 2 ** 20}
            for path in paths:
                path.unlink()
    for name in formats:
        line = {"bench": "dicom", "format": name, "side": args.side, "decodes": results[name]["decodes"],
                "workers": args.workers, "images_per_s": round(results[name]["images_per_s"], 2),
                "mb_per_image": round(results[name]["mb_per_image"], 2),
                "ratio_to_png16": round(results[name]["images_per_s"] / results["png16"]["images_per_s"], 3)}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
