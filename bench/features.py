"""Handcrafted-feature throughput: the batched core vs a plain per-image loop of the same
scikit-image / OpenCV / numpy calls (how the reference solution computed them).

    python bench/features.py [--size 224] [--limit 2000]

Prints one JSON line per figure: images/s of each and their ratio, on the Kermany train
images (decoded and resized once beforehand, outside the timings); then the seconds to
pair 200,000 images (22 random features) with their nearest neighbour, exactly and with
faiss's IVF index, and the IVF recall of the exact neighbour.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import cv2
import numpy as np
from skimage.feature import graycomatrix, graycoprops
from skimage.measure import shannon_entropy

from cxr.data.ingest import IngestConfig, read_source
from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.features.handcrafted import handcrafted_features
from cxr.features.pairs import SEARCHES, nearest_neighbours


def reference_features(image: np.ndarray) -> list[float]:
    """One image, the reference way: numpy statistics, skimage GLCM, OpenCV Sobel."""
    pixels = image.astype(np.float64).ravel()
    out = [pixels.mean(), pixels.std(), np.median(pixels), pixels.min(), pixels.max(),
           *np.percentile(pixels, [25, 75, 90]), shannon_entropy(image), pixels.var()]
    glcm = graycomatrix(image, distances=[1, 3, 5], angles=[0], levels=256, symmetric=True, normed=True)
    out += [graycoprops(glcm, p)[i, 0] for i in range(3) for p in ("contrast", "homogeneity", "energy")]
    magnitude = np.hypot(cv2.Sobel(image, cv2.CV_64F, 1, 0), cv2.Sobel(image, cv2.CV_64F, 0, 1))
    return out + [magnitude.mean(), magnitude.std(), magnitude.max()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--limit", type=int, default=2000, help="images timed (the loop is slow)")
    args = parser.parse_args()
    source = read_source(IngestConfig(source="folders", path="{data_dir}/kermany-pneumonia-224/train",
                                      negative_class="NORMAL"))
    images = preprocess_imageset(source, PreprocessConfig(image_size=args.size), progress=False).images[:args.limit]

    started = time.perf_counter()
    for image in images:
        reference_features(image)
    loop_s = time.perf_counter() - started
    started = time.perf_counter()
    handcrafted_features(images)
    core_s = time.perf_counter() - started
    n = len(images)
    print(json.dumps({"bench": "features", "images": n, "image_size": args.size, "cores": os.cpu_count(),
                      "per_image_loop_images_per_s": round(n / loop_s, 1),
                      "batched_core_images_per_s": round(n / core_s, 1), "speedup": round(loop_s / core_s, 2)}), flush=True)
    pool = np.random.default_rng(0).normal(size=(200_000, 22))
    found = {}
    for search in SEARCHES.names():
        started = time.perf_counter()
        found[search] = nearest_neighbours(pool, k=1, search=search).indices[:, 0]
        print(json.dumps({"bench": "nn_pairs", "search": search, "images": len(pool), "features": 22, "k": 1,
                          "seconds": round(time.perf_counter() - started, 2)}), flush=True)
    print(json.dumps({"bench": "nn_pairs", "ivf_recall_at_1": round(float((found["ivf"] == found["exact"]).mean()), 4),
                      "note": "isotropic Gaussian features: the worst case for an approximate index"}), flush=True)


if __name__ == "__main__":
    main()
