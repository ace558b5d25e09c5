"""Kermany pneumonia benchmark: the full training pipeline, then a test-set submission.

    python bench/pneumonia.py --out outputs/bench [--config configs/full.yaml]

Runs in a fresh, temporary ZenML/MLflow home (a cold run), and prints one JSON object per
line: val AUC, wall seconds per step, preprocessing and training images/s, single-pass vs
5-view TTA vs bare ``model(x)`` inference throughput, the cached re-run's wall time, peak
RSS, and the ZenML overhead (a short fine-tune through the pipeline vs the same call
straight into the core, as a ratio). The submission for ``test/images`` lands in --out.
``--no-full`` skips the full run and takes the other figures from the short run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from pipelines import runner as cli

HOME = cli.fresh_home("cxr-bench-")


def emit(**fields) -> None:
    print(json.dumps({"bench": "pneumonia", **fields}), flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_config(base: dict, out: Path, name: str, **train_overrides) -> Path:
    config = json.loads(json.dumps(base))
    config["parameters"]["submission_path"] = str(out / "submission.csv")
    config["parameters"]["train"].update(train_overrides)
    path = HOME / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def step_seconds(run) -> dict[str, float]:
    return {name: round((s.end_time - s.start_time).total_seconds(), 2)
            for name, s in run.steps.items() if s.end_time and s.start_time}


def timed(fn, repeat: int = 2) -> float:
    """Best of ``repeat`` wall times of ``fn()``."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def inference_figures(checkpoint, images: np.ndarray, batch_size: int = 64) -> None:
    """Bare model(x) over pre-normalised tensors vs predict_proba single-pass and 5-view TTA."""
    from cxr.infer.predict import predict_proba
    from cxr.infer.tta import REFERENCE_VIEWS, tta_views

    model, meta = checkpoint.build_model(), checkpoint.meta
    tensors = [torch.from_numpy(images[i:i + batch_size]).unsqueeze(1).float().div(255).sub(meta.mean).div(meta.std)
               for i in range(0, len(images), batch_size)]

    def bare() -> None:
        with torch.inference_mode():
            for x in tensors:
                torch.sigmoid(model(x))

    bare_s = timed(bare)
    single_s = timed(lambda: predict_proba(model, images, meta.mean, meta.std, batch_size, "cpu"))
    tta_s = timed(lambda: predict_proba(model, images, meta.mean, meta.std, batch_size, "cpu",
                                        tta_views(REFERENCE_VIEWS)))
    n = len(images)
    emit(metric="inference_images_per_s", bare_model_loop=round(n / bare_s, 1), single_pass=round(n / single_s, 1),
         tta_5_views=round(n / tta_s, 1), single_vs_bare=round(bare_s / single_s, 3),
         tta_cost_x_single=round(tta_s / single_s, 3))


def val_fields(run) -> dict:
    """The run's val metrics and the checkpoint they belong to (best epoch, backbone, size)."""
    metrics = run.steps["evaluate"].outputs["val_metrics"][0].load()
    history = run.steps["finetune"].outputs["history"][0].load()
    meta = run.steps["finetune"].outputs["checkpoint"][0].load().meta
    return dict(mean_auc=round(metrics["mean_auc"], 4), average_precision=round(metrics["mean_average_precision"], 4),
                f1=round(metrics["mean_f1"], 4), kappa=round(metrics["mean_kappa"], 4), best_epoch=meta.epoch,
                epochs_run=len(history), backbone=meta.model.backbone, image_size=meta.image_size)


def full_run(Client, base: dict, out: Path):
    """The cold full pipeline run: per-step wall, val metrics, training speed, submission."""
    started = time.perf_counter()
    run = Client().get_pipeline_run(cli.train(str(write_config(base, out, "full")), "bench-full").id)
    wall = time.perf_counter() - started
    steps = step_seconds(run)
    emit(metric="pipeline_wall_s", value=round(wall, 1), steps=steps, orchestration_s=round(wall - sum(steps.values()), 1))
    emit(metric="val", **val_fields(run))
    history = run.steps["finetune"].outputs["history"][0].load()
    emit(metric="train_images_per_s", mean=round(float(history["train_images_per_s"].mean()), 1),
         median=round(float(history["train_images_per_s"].median()), 1),
         train_seconds=round(float(history["train_seconds"].sum()), 1))
    emit(metric="submission", path=str((out / "submission.csv").resolve()))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for submission.csv")
    parser.add_argument("--config", default=str(cli.REPO_ROOT / "configs" / "full.yaml"))
    parser.add_argument("--overhead-epochs", type=int, default=2)
    parser.add_argument("--no-full", action="store_true",
                        help="skip the full run: re-run, inference and overhead figures from the short run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(Path(args.config).read_text())

    from cxr.data.ingest import IngestConfig, read_source
    from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
    from cxr.models.classifier import ModelConfig
    from cxr.train.config import TrainConfig
    from cxr.train.loop import fit

    params = base["parameters"]
    preprocess_cfg = PreprocessConfig(**params["preprocess"])
    raw = read_source(IngestConfig(**params["data"]))
    started = time.perf_counter()
    preprocess_imageset(raw, preprocess_cfg, progress=False)
    seconds = time.perf_counter() - started
    emit(metric="preprocess_images_per_s", value=round(len(raw) / seconds, 1), images=len(raw),
         image_size=preprocess_cfg.image_size, clahe=preprocess_cfg.clahe, cores=os.cpu_count())

    from zenml.client import Client

    full = None
    if not args.no_full:
        full = full_run(Client, base, args.out)
    short_config = write_config(base, args.out, "short", epochs=args.overhead_epochs)
    short = Client().get_pipeline_run(cli.train(str(short_config), "bench-short").id)
    emit(metric="val", **val_fields(short), of="short")
    rerun_config = write_config(base, args.out, "full") if full else short_config
    started = time.perf_counter()
    cached = Client().get_pipeline_run(cli.train(str(rerun_config), "bench-cached").id)
    emit(metric="cached_rerun_wall_s", value=round(time.perf_counter() - started, 1),
         of="full" if full else f"{args.overhead_epochs}-epoch config",
         cached_steps=sorted(n for n, s in cached.steps.items() if str(s.status.value) == "cached"))

    source = full or short
    test = source.steps["preprocess_test"].outputs["decoded_images"][0].load()
    inference_figures(source.steps["finetune"].outputs["checkpoint"][0].load(), test.images)

    zenml_s = step_seconds(short)["finetune"]
    decoded = short.steps["preprocess_images"].outputs["decoded_images"][0].load()
    train_cfg = TrainConfig(**{**params["train"], "epochs": args.overhead_epochs})
    started = time.perf_counter()
    fit(decoded.split("train"), decoded.split("val"), ModelConfig(**params["model"]), train_cfg, progress=False)
    direct_s = time.perf_counter() - started
    emit(metric="zenml_overhead", epochs=args.overhead_epochs, finetune_step_s=zenml_s, direct_core_fit_s=round(direct_s, 2),
         ratio=round(zenml_s / direct_s, 3), overhead_fraction=round(zenml_s / direct_s - 1, 3))
    emit(metric="peak_rss_mb", value=round(peak_rss_mb(), 1))


if __name__ == "__main__":
    main()
