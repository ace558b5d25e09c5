"""Label efficiency on Kermany: random init vs SSL initialisations, frozen and full fine-tune,
with 1%, 10% and 100% of the training labels.

    python bench/label_efficiency.py --out outputs/label_efficiency [--methods simsiam-nn simsiam moco byol]

SSL always sees every training image (labels unused); the fine-tune sees the labelled
fraction (stratified, seeded). Validation is the same patient-level val split for every
cell. "frozen" trains a linear head over non-affine BatchNorm (standard linear evaluation);
labelled sets under 512 images are repeated to 512 draws per epoch. Writes
``<init>_<finetune>_<pct>pct.csv`` (5-view TTA on test/images) to --out and prints one
JSON line per SSL run and per cell, then a summary. Runs on the core directly
(no ZenML) at a small resolution so the whole grid fits a 2-core CPU budget.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from cxr.data.imageset import ImageSet
from cxr.data.ingest import IngestConfig, read_source, resolve_path
from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.data.split import SplitConfig, split_train_val
from cxr.features.handcrafted import fit_feature_table, handcrafted_features
from cxr.features.pairs import nearest_neighbours
from cxr.infer.submission import make_submission, write_submission
from cxr.infer.tta import predict_imageset
from cxr.models.classifier import ModelConfig
from cxr.ssl.pretrain import SSLConfig, pretrain
from cxr.ssl.probe import probe
from cxr.train.config import TrainConfig
from cxr.train.loop import fit

KERMANY = "{data_dir}/kermany-pneumonia-224"
INITS = {"simsiam-nn": ("simsiam", "nn_pairs"), "simsiam": ("simsiam", "two_views"), "moco": ("moco", "two_views"),
         "byol": ("byol", "two_views"), "simclr": ("simclr", "two_views"), "swav": ("swav", "two_views")}
PERCENTS = (1, 10, 100)
EPOCHS = {1: 10, 10: 10, 100: 4}  # fine-tune epochs per label fraction (2-core CPU budget)
MIN_SAMPLES_PER_EPOCH = 512  # small labelled sets repeat so every epoch is >= 16 steps


def emit(**fields) -> None:
    print(json.dumps({"bench": "label_efficiency", **fields}), flush=True)


def labelled_fraction(train: ImageSet, pct: int, seed: int) -> ImageSet:
    """A stratified, seeded ``pct`` % of the train rows (all of them at 100)."""
    if pct == 100:
        return train
    keep, _ = train_test_split(np.arange(len(train)), train_size=pct / 100, stratify=train.labels[:, 0],
                               random_state=seed)
    return train.subset(np.sort(keep))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--methods", nargs="+", default=list(INITS), choices=list(INITS))
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--ssl-epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started_all = time.perf_counter()

    prep = PreprocessConfig(image_size=args.image_size)
    data = IngestConfig(source="folders", path=f"{KERMANY}/train", negative_class="NORMAL",
                        patient_id_pattern=r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)")
    images = split_train_val(preprocess_imageset(read_source(data), prep, progress=False), SplitConfig(seed=args.seed))
    train, val = images.split("train"), images.split("val")
    test = preprocess_imageset(read_source(IngestConfig(source="images", path=f"{KERMANY}/test/images",
                                                        label_names=["pneumonia"])), prep, progress=False)
    sample = str(resolve_path(f"{KERMANY}/test/sample_submission.csv"))
    emit(setup={"backbone": args.backbone, "image_size": args.image_size, "ssl_epochs": args.ssl_epochs,
                "train_images": len(train), "val_images": len(val), "cores": os.cpu_count()})

    inits: dict[str, object] = {"random": None}
    pairs = None
    for name in args.methods:
        method, positives = INITS[name]
        if positives == "nn_pairs" and pairs is None:
            pairs = nearest_neighbours(fit_feature_table(handcrafted_features(train.images)).standardised()).pairs()
        started = time.perf_counter()
        cfg = SSLConfig(method=method, positives=positives, epochs=args.ssl_epochs, batch_size=64, seed=args.seed)
        backbone, history = pretrain(train.images, args.backbone, cfg, pairs if positives == "nn_pairs" else None,
                                     progress=False)
        seconds = time.perf_counter() - started
        emit(ssl=name, seconds=round(seconds, 1), final_loss=round(float(history["loss"].iloc[-1]), 4),
             embedding_std=round(float(history["embedding_std"].iloc[-1]), 3),
             collapsed=bool(history["collapsed"].iloc[-1]),
             **{k: round(v, 4) for k, v in probe(backbone, train, val).items()})
        inits[name] = backbone

    results = {}
    for init, backbone in inits.items():
        for finetune in ("frozen", "full"):
            for pct in PERCENTS:
                part = labelled_fraction(train, pct, args.seed)
                frozen = finetune == "frozen"
                model = ModelConfig(backbone=args.backbone, head="linear", head_batch_norm=frozen,
                                    freeze_backbone=frozen)
                cfg = TrainConfig(epochs=EPOCHS[pct], batch_size=32, lr=3e-3 if frozen else 1e-3, weight_decay=0.05,
                                  samples_per_epoch=max(len(part), MIN_SAMPLES_PER_EPOCH), seed=args.seed)
                started = time.perf_counter()
                result = fit(part, val, model, cfg, progress=False, backbone_init=backbone)
                seconds = time.perf_counter() - started
                auc = result.checkpoint.meta.val_metrics["val_auc"]
                results[(init, finetune, pct)] = auc
                submission = make_submission(predict_imageset(result.checkpoint, test), sample)
                write_submission(submission, args.out / f"{init}_{finetune}_{pct}pct.csv")
                emit(init=init, finetune=finetune, pct=pct, labelled=len(part), val_auc=round(auc, 4),
                     seconds=round(seconds, 1))

    best = lambda pct, inits_: max(results[(i, f, pct)] for i in inits_ for f in ("frozen", "full"))  # noqa: E731
    ssl_inits = [i for i in inits if i != "random"]
    if ssl_inits:
        emit(summary={"ssl_gain_at_1pct": round(best(1, ssl_inits) - best(1, ["random"]), 4),
                      "best_ssl_10pct_over_100pct": round(best(10, ssl_inits) / best(100, list(inits)), 4),
                      "wall_minutes": round((time.perf_counter() - started_all) / 60, 1)})


if __name__ == "__main__":
    main()
