"""CFT where its effect is controlled: hide a seeded fraction of each category's train labels,
train in Negative mode (hidden labels read as 0), then CFT the last layer in Ignore mode
(fitness on the still-known labels only), and compare val mean AUC before and after.

    python bench/cft_partial.py [--hide 0.5] [--seeds 0 1 2] [--epochs 15]

Data: nih1000-64 (800 labelled NIH images, 14 findings), patient-level split per seed;
val labels are never hidden. The val patients are halved: CFT keeps its candidates by one
half ("select") and the figures are val mAUC on the other half ("report"), so the gain is
not measured on the rows that chose it. Prints one JSON line per seed and the mean.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from cxr.cft.genetic import CFTConfig, category_finetune
from cxr.cft.head import last_layer, penultimate_features, with_last_layer
from cxr.data.imageset import ImageSet
from cxr.data.ingest import IngestConfig, read_source
from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.data.split import SplitConfig, split_train_val
from cxr.infer.predict import predict_proba
from cxr.metrics.classification import mean_auc
from cxr.models.checkpoint import Checkpoint
from cxr.models.classifier import ModelConfig
from cxr.train.config import TrainConfig
from cxr.train.loop import fit

NIH1000 = IngestConfig(source="nih", path="{data_dir}/nih1000-64/labels.csv", image_dir="{data_dir}/nih1000-64/images")


def hide_labels(train: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, np.ndarray]:
    """(Negative-mode copy with hidden labels set to 0 and known, Ignore-mode mask)."""
    hidden = np.random.default_rng(seed).random(train.labels.shape) < fraction
    negative = ImageSet(train.manifest, train.label_names, np.where(hidden, 0, train.labels).astype(np.float32),
                        np.ones_like(train.mask), train.images)
    return negative, train.mask & ~hidden


def val_auc(checkpoint: Checkpoint, val: ImageSet) -> float:
    """Single-view val mean AUC over known labels."""
    probs = predict_proba(checkpoint.build_model(), val.images, checkpoint.meta.mean, checkpoint.meta.std)
    return mean_auc(val.labels, probs, val.mask)


def run_seed(images: ImageSet, args: argparse.Namespace, seed: int) -> dict:
    split = split_train_val(images, SplitConfig(val_fraction=0.25, seed=seed))
    train = split.split("train")
    halves = split_train_val(split.split("val"), SplitConfig(val_fraction=0.49, seed=seed))
    select, val = halves.split("train"), halves.split("val")
    negative, ignore_mask = hide_labels(train, args.hide, seed)
    cfg = TrainConfig(epochs=args.epochs, batch_size=32, lr=2e-3, weight_decay=0.05, loss="bce", seed=seed)
    started = time.perf_counter()
    checkpoint = fit(negative, select, ModelConfig(backbone=args.backbone), cfg, progress=False).checkpoint
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    train_x, select_x = penultimate_features(checkpoint, train.images), penultimate_features(checkpoint, select.images)
    weight, bias = last_layer(checkpoint)
    new_w, new_b, report = category_finetune(train_x, train.labels, ignore_mask, select_x, select.labels, select.mask,
                                             weight, bias, list(train.label_names), CFTConfig(seed=seed),
                                             progress=False)
    after = with_last_layer(checkpoint, new_w, new_b)
    done = report[report["skipped"] == ""]
    return {"seed": seed, "hidden_fraction": args.hide, "select_images": len(select), "report_images": len(val),
            "select_mauc_before": round(val_auc(checkpoint, select), 4),
            "select_mauc_after": round(val_auc(after, select), 4),
            "val_mauc_before": round(val_auc(checkpoint, val), 4), "val_mauc_after": round(val_auc(after, val), 4),
            "categories_tuned": int(len(done)), "categories_changed": int((done["val_fitness_after"]
                                                                            > done["val_fitness_before"]).sum()),
            "train_s": round(train_s, 1), "cft_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hide", type=float, default=0.5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--backbone", default="resnet18")
    args = parser.parse_args()
    images = preprocess_imageset(read_source(NIH1000), PreprocessConfig(image_size=64), progress=False)
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(images, args, seed))
        print(json.dumps({"bench": "cft_partial", **rows[-1]}), flush=True)
    before = float(np.mean([r["val_mauc_before"] for r in rows]))
    after = float(np.mean([r["val_mauc_after"] for r in rows]))
    print(json.dumps({"bench": "cft_partial", "seeds": args.seeds, "mean_val_mauc_before": round(before, 4),
                      "mean_val_mauc_after": round(after, 4), "mean_gain": round(after - before, 4),
                      "backbone": args.backbone, "epochs": args.epochs, "cores": os.cpu_count()}), flush=True)


if __name__ == "__main__":
    main()
