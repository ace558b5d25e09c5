"""Per-run overhead of a small training pipeline with and without the cache of ZenML's package
lookup (``materializers.cache_package_lookup``), in the same process, on generated images.

    PYTHONPATH=. python bench/pipeline_overhead.py [--repeats 2]

(``PYTHONPATH=.`` for the test helpers that generate the images, as ``bench/serve.py`` needs.)

Runs in a temporary ZenML store. After a warm-up run, each repeat runs the pipeline once with
ZenML's uncached lookup and once with the cache (each with its own lr, so nothing is cached).
Prints one JSON line per run and a summary line with the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
TMP = Path(tempfile.mkdtemp(prefix="cxr-overhead-"))
os.environ["ZENML_CONFIG_PATH"], os.environ["ZENML_REPOSITORY_PATH"] = str(TMP / "zen"), str(TMP / "repo")

from tests.helpers import write_class_tree  # noqa: E402
from tests.pipeline.conftest import FAST_INTERVALS, folders_source, write_yaml  # noqa: E402


def config(lr: float) -> Path:
    tree = TMP / "tree"
    if not tree.exists():
        write_class_tree(tree, n_per_class=24, size=48)
    return write_yaml(TMP / f"run-{lr}.yaml", {"parameters": {
        **FAST_INTERVALS, "data": folders_source(tree), "split": {"val_fraction": 0.25},
        "preprocess": {"image_size": 32, "clahe": False}, "model": {"backbone": "resnet10t"},
        "train": {"epochs": 2, "batch_size": 8, "lr": lr}, "tta_views": ["original"],
        "registered_model_name": "cxr-overhead", "drift": None, "audit": None, "guardrails": None}})


def timed_run(lr: float) -> float:
    from pipelines import runner

    started = time.perf_counter()
    runner.run_pipeline("train", str(config(lr)), f"overhead-{lr}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from zenml.utils import source_utils

    import materializers
    from pipelines import runner

    runner.setup_stack()
    cached = source_utils._get_package_for_module
    uncached = cached.__wrapped__
    timed_run(1e-2)
    walls: dict[str, list[float]] = {"uncached": [], "cached": []}
    for repeat in range(args.repeats):
        for mode, lookup in (("uncached", uncached), ("cached", cached)):
            source_utils._get_package_for_module = lookup
            wall = timed_run(2e-3 * (repeat + 1) + (1e-4 if mode == "cached" else 0))
            walls[mode].append(wall)
            print(json.dumps({"bench": "pipeline_overhead", "mode": mode, "repeat": repeat, "wall_s": round(wall, 2)}))
    materializers.cache_package_lookup()
    mean = {mode: sum(values) / len(values) for mode, values in walls.items()}
    print(json.dumps({"bench": "pipeline_overhead", "summary": True, "uncached_s": round(mean["uncached"], 2),
                      "cached_s": round(mean["cached"], 2), "speedup": round(mean["uncached"] / mean["cached"], 2)}))
    shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
