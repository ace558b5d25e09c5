"""Near-duplicate thresholds of the leakage audit, measured on real images.

    python bench/leakage_threshold.py

Kermany train (224 px JPEG, preprocessed as in zenml_config.yaml: 96 px, pad, CLAHE) and
nih1000 (64 px PNG, preprocessed at its native 64 px). For 300 train images, the distances
from transformed copies (flip, crops, JPEG re-encodes, brightness) back to their originals:
perceptual-hash bits, 1 - correlation of 48 and 32 px thumbnails ("pixel"), and, for the
record, the standardised handcrafted-feature distance. Then, between distinct patients,
each image's nearest other-patient neighbour within train and from test to train, the
number of distinct-patient pairs each (hash, pixel) threshold flags, and what the
``AuditConfig`` defaults flag (``find_leaks`` on train~test, timed). One JSON line per
figure; the flagged distinct-patient pairs are drawn to /tmp/leakage_<dataset>_*.png.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy.spatial.distance import cdist

from cxr.data.decode import decode_gray
from cxr.data.imageset import ImageSet
from cxr.data.ingest import IngestConfig, read_source
from cxr.data.leakage import (AuditConfig, find_leaks, fingerprints, hash_distances, is_near,
                              THUMBNAIL_SIZE, leak_counts, leak_pairs_grid, pixel_distances, row_chunks, subset)
from cxr.data.preprocess import PreprocessConfig, prepare_image, preprocess_imageset
from cxr.features.handcrafted import FeatureTable, fit_feature_table, handcrafted_features

KERMANY_PATIENT = r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)"  # as in zenml_config.yaml
SAMPLE = 300
SIZES = (THUMBNAIL_SIZE, 32)
HASH_GRID = (8, 12, 14, 16, 20, 64)
PIXEL_GRID = (0.03, 0.035, 0.04, 0.045, 0.05, 0.06, 0.08)
DATASETS = {  # image size, crops (px at the source size), train (patient ids) and test sources
    "kermany": {"size": 96, "crops": (2, 4, 8),
                "train": IngestConfig(source="folders", path="{data_dir}/kermany-pneumonia-224/train",
                                      negative_class="NORMAL", patient_id_pattern=KERMANY_PATIENT),
                "test": IngestConfig(source="images", path="{data_dir}/kermany-pneumonia-224/test/images")},
    "nih1000": {"size": 64, "crops": (1, 2, 4),
                "train": IngestConfig(source="nih", path="{data_dir}/nih1000-64/labels.csv",
                                      image_dir="{data_dir}/nih1000-64/images"),
                "test": IngestConfig(source="images", path="{data_dir}/nih1000-64/test/images")},
}


def emit(**fields) -> None:
    print(json.dumps({"bench": "leakage_threshold", **fields}), flush=True)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_GRAYSCALE)


def transforms(crops: tuple[int, ...]) -> dict:
    """Name -> copy of a decoded, not yet preprocessed image."""
    out = {"hflip": lambda im: im[:, ::-1], "hflip+jpeg75": lambda im: jpeg(im[:, ::-1], 75)}
    for k in crops:
        out[f"crop{k}"] = lambda im, k=k: im[k:-k, k:-k]
        out[f"crop{k}_corner"] = lambda im, k=k: im[k:, k:]
    for quality in (50, 75, 95):
        out[f"jpeg{quality}"] = lambda im, q=quality: jpeg(im, q)
    out["brightness+10"] = lambda im: np.clip(im.astype(np.int16) + 10, 0, 255).astype(np.uint8)
    return out


def summary(values: np.ndarray, qs: tuple[float, ...]) -> dict:
    return {f"p{q:g}": round(float(np.percentile(values, q)), 4) for q in qs} | {
        "min": round(float(values.min()), 4), "max": round(float(values.max()), 4)}


def distances(a: dict, b: dict, b_rows: slice = slice(None)) -> dict[str, np.ndarray]:
    """(Nb, Na) hash, pixel<size> and feature distances from rows ``b_rows`` of one measured set to another."""
    out = {"hash": hash_distances(a[THUMBNAIL_SIZE], subset(b[THUMBNAIL_SIZE], b_rows)).astype(np.float64)}
    out |= {f"pixel{size}": pixel_distances(a[size], subset(b[size], b_rows)) for size in SIZES}
    return out | {"feature": cdist(b["feature"][b_rows], a["feature"])}


def measure(images: np.ndarray, table: FeatureTable) -> dict:
    """Fingerprints at every thumbnail size, and features standardised as in ``table``, of ``images``."""
    features = FeatureTable(handcrafted_features(images), table.mean, table.scale).standardised()
    return {size: fingerprints(images, size) for size in SIZES} | {"feature": features}


def measure_copies(name: str, train: ImageSet, measured: dict, table: FeatureTable, spec: dict,
                   cfg: AuditConfig) -> None:
    """Distances from transformed copies of SAMPLE train images back to their originals."""
    pick = np.sort(np.random.default_rng(0).choice(len(train), SAMPLE, replace=False))
    raw = [decode_gray(path) for path in train.manifest["path"].iloc[pick]]
    originals = {size: subset(measured[size], pick) for size in SIZES} | {"feature": measured["feature"][pick]}
    preprocess = PreprocessConfig(image_size=spec["size"])
    for transform, copy in transforms(spec["crops"]).items():
        copies = np.stack([prepare_image(np.ascontiguousarray(copy(image)), preprocess) for image in raw])
        found = {key: np.diagonal(value).astype(np.float64)
                 for key, value in distances(originals, measure(copies, table)).items()}
        caught = is_near(found["hash"], found[f"pixel{THUMBNAIL_SIZE}"], cfg)
        emit(dataset=name, copies=transform, images=SAMPLE, **{k: summary(v, (50, 95)) for k, v in found.items()},
             caught_by_defaults=round(float(caught.mean()), 4))


def distinct_pairs(a: dict, b: dict, patients_a: np.ndarray, patients_b: np.ndarray,
                   same_set: bool) -> tuple[dict, pd.DataFrame]:
    """Each B image's nearest other-patient A image by each distance, and the distinct-patient pairs
    within max(PIXEL_GRID) at some size (each pair once when A and B are one set)."""
    nearest, pairs = {}, []
    for rows in row_chunks(len(b["feature"]), len(a["feature"])):
        found = distances(a, b, b_rows=rows)
        other = patients_b[rows, None] != patients_a[None, :]
        for key, value in found.items():
            nearest.setdefault(key, []).append(np.where(other, value, np.inf).min(1))
        if same_set:
            other &= np.arange(rows.start, rows.start + other.shape[0])[:, None] < np.arange(other.shape[1])[None, :]
        close = other & np.logical_or.reduce([found[f"pixel{size}"] <= max(PIXEL_GRID) for size in SIZES])
        near_b, near_a = np.nonzero(close)
        pairs.append(pd.DataFrame({"index_a": near_a, "index_b": near_b + rows.start,
                                   **{key: value[near_b, near_a] for key, value in found.items()}}))
    return {key: np.concatenate(value) for key, value in nearest.items()}, pd.concat(pairs, ignore_index=True)


def measure_distinct(name: str, sets: dict, measured: dict, cfg: AuditConfig) -> None:
    """Nearest other-patient neighbours within train and from test to train, and what each threshold flags."""
    patients = {part: s.manifest["patient_id"].to_numpy(object) for part, s in sets.items()}
    for b in ("train", "test"):
        nearest, pairs = distinct_pairs(measured["train"], measured[b], patients["train"], patients[b], b == "train")
        pair = f"train~{b}"
        emit(dataset=name, distinct_patients=pair, images=len(nearest["hash"]),
             **{f"nearest_{key}": summary(value, (0.1, 1, 5, 50)) for key, value in nearest.items()})
        for size in SIZES:
            emit(dataset=name, distinct_patients=pair, pixel=size, flagged_pairs={
                f"hash<={h},pixel<={p}": int(((pairs["hash"] <= h) & (pairs[f"pixel{size}"] <= p)).sum())
                for h in HASH_GRID for p in PIXEL_GRID})
        flagged = pairs[is_near(pairs["hash"], pairs[f"pixel{THUMBNAIL_SIZE}"], cfg)]
        leaks = flagged.assign(kind="near", part_a="train", part_b=b, id_a="", id_b="", hash_distance=flagged["hash"],
                               pixel_distance=flagged[f"pixel{THUMBNAIL_SIZE}"]).sort_values("pixel_distance")
        grid = leak_pairs_grid(sets, leaks, 16)
        path = Path(tempfile.gettempdir()) / f"leakage_{name}_{pair.replace('~', '_')}.png"
        if grid is not None:
            grid.save(path)
        emit(dataset=name, distinct_patients=pair, flagged_by_defaults=len(flagged),
             images_involved=int(flagged["index_b"].nunique()), drawn=str(path) if grid is not None else None,
             flagged=flagged.round(4).to_dict("records")[:16])


def main() -> None:
    cfg = AuditConfig()
    emit(defaults=cfg.model_dump())
    for name, spec in DATASETS.items():
        started = time.perf_counter()
        preprocess = PreprocessConfig(image_size=spec["size"])
        sets = {part: preprocess_imageset(read_source(spec[part]), preprocess, progress=False)
                for part in ("train", "test")}
        table = fit_feature_table(pd.concat([handcrafted_features(s.images) for s in sets.values()], ignore_index=True))
        measured = {part: measure(s.images, table) for part, s in sets.items()}
        measure_copies(name, sets["train"], measured["train"], table, spec, cfg)
        measure_distinct(name, sets, measured, cfg)
        audit_started = time.perf_counter()
        counts = leak_counts(find_leaks(sets, cfg))
        emit(dataset=name, find_leaks="train~test", counts=counts, train=len(sets["train"]), test=len(sets["test"]),
             audit_seconds=round(time.perf_counter() - audit_started, 1),
             dataset_seconds=round(time.perf_counter() - started, 1))


if __name__ == "__main__":
    main()
