"""Batch inference from the registry: single-pass vs 5-view TTA images/s, and the memory of
streaming 20,000 images through the model in chunks.

    python bench/inference.py [--model-uri models:/cxr-pneumonia@champion] [--count 20000]

The model is loaded from the local stack's MLflow registry (run ``python run.py train``
first). Images are the Kermany test files, repeated under distinct ids up to ``--count``.
Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from cxr.data.imageset import ImageSet, make_manifest
from cxr.data.ingest import resolve_path
from cxr.data.sources import list_images
from cxr.infer.batch import predict_chunks, write_predictions
from cxr.infer.ensemble import EnsembleModel
from cxr.infer.serving import serving_preprocess
from cxr.infer.tta import REFERENCE_VIEWS, SINGLE_VIEW
from cxr.lifecycle import DEFAULT_MODEL_NAME
from pipelines import runner as cli


def describe(model) -> dict:
    """Backbone(s) and image size(s) of a served checkpoint or ensemble."""
    checkpoints = list(model.members.values()) if isinstance(model, EnsembleModel) else [model]
    sizes = [c.meta.image_size for c in checkpoints]
    return {"backbone": "+".join(c.meta.model.backbone for c in checkpoints),
            "image_size": sizes[0] if len(sizes) == 1 else sizes}


def decoded_sizes(model) -> list[int]:
    """Image size of each distinct preprocessing: an ensemble decodes once per distinct one."""
    checkpoints = list(model.members.values()) if isinstance(model, EnsembleModel) else [model]
    return list({serving_preprocess(c).model_dump_json(): c.meta.image_size for c in checkpoints}.values())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def repeated(files: list[Path], count: int) -> ImageSet:
    """``count`` rows cycling over ``files``, each with its own id."""
    paths = [str(files[i % len(files)]) for i in range(count)]
    ids = [f"{i:06d}_{Path(p).stem}" for i, p in enumerate(paths)]
    return ImageSet(make_manifest(ids, paths), (), np.zeros((count, 0), np.float32), np.zeros((count, 0), bool))


def throughput(model, images: ImageSet, views, chunk_size: int) -> float:
    started = time.perf_counter()
    for _ in predict_chunks(model, images, views, chunk_size, progress=False):
        pass
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-uri", default=f"models:/{DEFAULT_MODEL_NAME}@champion")
    parser.add_argument("--images", default="{data_dir}/kermany-pneumonia-224/test/images")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--speed-count", type=int, default=600, help="images timed for the TTA/single ratio")
    parser.add_argument("--chunk-size", type=int, default=1024)
    args = parser.parse_args()

    import mlflow

    cli.setup_stack()
    mlflow.set_tracking_uri(cli.tracking_uri())
    from steps.registry.lifecycle import served_model

    model = served_model(args.model_uri)
    files = list_images(resolve_path(args.images))
    small = repeated(files, args.speed_count)
    single = throughput(model, small, SINGLE_VIEW, args.chunk_size)
    tta = throughput(model, small, REFERENCE_VIEWS, args.chunk_size)
    print(json.dumps({"bench": "inference", "model_uri": args.model_uri, **describe(model), "images": len(small),
                      "single_pass_images_per_s": round(single, 1), "tta_5_views_images_per_s": round(tta, 1),
                      "tta_cost_x_single": round(single / tta, 2), "cores": os.cpu_count()}), flush=True)

    before = current_rss_mb()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = write_predictions(predict_chunks(model, repeated(files, args.count), SINGLE_VIEW,
                                                args.chunk_size, progress=False), Path(tmp) / "predictions.csv")
    seconds = time.perf_counter() - started
    decoded_mb = args.count * sum(size ** 2 for size in decoded_sizes(model)) / 2**20
    print(json.dumps({"bench": "inference_stream", "images": rows, "chunk_size": args.chunk_size,
                      "seconds": round(seconds, 1), "images_per_s": round(rows / seconds, 1),
                      "rss_before_mb": round(before, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
                      "all_decoded_at_once_would_hold_mb": round(decoded_mb, 1)}), flush=True)


if __name__ == "__main__":
    main()
