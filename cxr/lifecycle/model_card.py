"""A model card per registered version: one self-contained HTML page (images embedded as data
URIs, no network) saying what the model is, what it was trained on, how well it does with what
uncertainty, what its scores mean, where it fails, and why it was or was not promoted.

The card is rendered from plain data (tables, PNG bytes, metadata dicts) with Jinja2, so the
pipeline and ``run.py card`` draw the same page from what a version stored.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any, Mapping

import jinja2
import numpy as np
import pandas as pd
from PIL import Image

from cxr.data.imageset import ImageSet
from cxr.infer.explain import gradcam_maps, overlay
from cxr.metrics.generalisation import part_labels
from cxr.models.checkpoint import Checkpoint

TEMPLATE = "model_card.html.j2"
SECTIONS = ("intended-use", "training-data", "preprocessing", "model", "metrics", "calibration", "operating-points",
            "subgroups", "robustness", "errors", "promotion", "code")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """A PNG as an inline ``data:`` URI, so the page needs no file or network beside it."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def confident_errors(y: np.ndarray, p: np.ndarray, mask: np.ndarray, count: int = 4) -> dict[str, list[tuple[int, int]]]:
    """(row, label) pairs of the ``count`` most confident false positives (negatives with the
    highest scores) and false negatives (positives with the lowest), over every known label."""
    rows, labels = np.nonzero(mask)
    truth, score = y[rows, labels] > 0.5, p[rows, labels]
    negatives, positives = np.flatnonzero(~truth), np.flatnonzero(truth)
    fp = negatives[np.argsort(-score[negatives], kind="stable")[:count]]
    fn = positives[np.argsort(score[positives], kind="stable")[:count]]
    return {"false_positives": [(int(rows[i]), int(labels[i])) for i in fp],
            "false_negatives": [(int(rows[i]), int(labels[i])) for i in fn]}


def error_gallery(checkpoint: Checkpoint, part: ImageSet, probs: np.ndarray, count: int = 4,
                  device: str = "auto") -> Image.Image | None:
    """Grad-CAM overlays of ``part``'s most confident false positives (top row) and false
    negatives (bottom row), titled with the label and score only (no image or patient id)."""
    names = list(checkpoint.meta.label_names)
    y, mask = part_labels(part, names)
    errors = confident_errors(y, probs, mask, count)
    if not any(errors.values()):
        return None
    rows = []
    for kind, pairs in (("FP", errors["false_positives"]), ("FN", errors["false_negatives"])):
        tiles = [overlay(part.images[i], gradcam_maps(checkpoint, part.images[i], [j], device)[0],
                         f"{kind} {names[j]} {probs[i, j]:.2f}") for i, j in pairs]
        blank = np.full_like(tiles[0], 255) if tiles else None
        rows.append(tiles + [blank] * (count - len(tiles)) if tiles else [])
    width = max(len(r) for r in rows)
    shape = next(t for r in rows for t in r).shape
    grid = [np.hstack(r) if r else np.full((shape[0], shape[1] * width, 3), 255, np.uint8) for r in rows]
    return Image.fromarray(np.vstack(grid))


def training_summary(images: ImageSet, source: Mapping[str, Any]) -> dict:
    """Per split: images, patients and positives per label; the label-free content hash and
    the source settings (which say the label policy). Counts only: no id leaves."""
    splits = {}
    for name in sorted(set(images.manifest["split"])):
        part = images.split(name)
        splits[name] = {"images": len(part), "patients": int(part.manifest["patient_id"].nunique()),
                        "positives": {label: int(part.labels[part.mask[:, j], j].sum())
                                      for j, label in enumerate(images.label_names)}}
    return {"splits": splits, "label_names": list(images.label_names), "content_hash": images.content_hash(),
            "source": {k: v for k, v in source.items() if v not in (None, "", [], {})}}


def _table(frame: pd.DataFrame | None, digits: int = 4) -> dict | None:
    """A DataFrame as ``{"columns", "rows"}`` of display strings (None stays None)."""
    if frame is None or frame.empty:
        return None

    def cell(value: Any) -> str:
        if isinstance(value, (bool, np.bool_)):
            return "yes" if value else "no"
        if isinstance(value, (float, np.floating)):
            return "–" if math.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    return {"columns": list(frame.columns), "rows": [[cell(v) for v in row] for row in frame.itertuples(index=False)]}


def interval_rows(intervals: pd.DataFrame | None) -> list[dict]:
    """One row per set and metric: the value and its interval, with the MLflow metric key."""
    if intervals is None or intervals.empty:
        return []
    return [{"set": row.set, "metric": row.metric, "key": f"trust/{row.set}_{row.metric}", "value": row.value,
             "low": row.low, "high": row.high} for row in intervals.itertuples()]


def failure_notes(intervals: pd.DataFrame | None, subgroups: pd.DataFrame | None,
                  robustness: pd.DataFrame | None, metrics: Mapping[str, float] | None = None) -> list[str]:
    """Where the evidence says the model does worse: labels it ranks no better than chance on
    val, the AUC lost from val to each held-out set, its worst corruption, its weakest
    well-sized subgroup and the subgroups too small to judge."""
    notes = [f"{key.removeprefix('val_auc_')}: val AUC {value:.4f}, no better than chance: do not use its score"
             for key, value in sorted((metrics or {}).items()) if key.startswith("val_auc_") and value <= 0.5]
    if intervals is not None and not intervals.empty:
        auc = intervals[intervals["metric"] == "mean_auc"].set_index("set")["value"]
        for name in [n for n in auc.index if n != "val" and "val" in auc.index]:
            notes.append(f"mean AUC {auc[name]:.4f} on {name} against {auc['val']:.4f} on val: val comes from "
                         "the training acquisitions and flatters")
    if robustness is not None and not robustness.empty:
        corrupted = robustness[robustness["corruption"] != "none"]
        worst = corrupted.groupby("corruption")["auc"].mean().sort_values()
        notes.append(f"weakest under {worst.index[0]} (mean AUC {worst.iloc[0]:.4f} over severities)")
    if subgroups is not None and not subgroups.empty:
        sized = subgroups[~subgroups["too_small"].astype(bool)].dropna(subset=["auc"])
        if not sized.empty:
            weakest = sized.sort_values("auc").iloc[0]
            notes.append(f"weakest subgroup: {weakest['set']} {weakest['attribute']}={weakest['group']} "
                         f"({weakest['label']}, AUC {weakest['auc']:.4f}, n={weakest['n']})")
        small = int(subgroups["too_small"].astype(bool).sum())
        if small:
            notes.append(f"{small} subgroup rows have under 10 positives or negatives: not enough to judge")
    return notes


def render_model_card(context: Mapping[str, Any]) -> str:
    """The card's HTML from ``context`` (see ``card_context``), autoescaped."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, d=4: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"
    return env.get_template(TEMPLATE).render(**context, sections=SECTIONS)


def card_context(name: str, version: int, aliases: list[str], tags: Mapping[str, str], metrics: Mapping[str, float],
                 meta: Mapping[str, Any], members: list[str], data: Mapping[str, Any] | None,
                 knobs: Mapping[str, Any] | None, tables: Mapping[str, pd.DataFrame | None],
                 images: Mapping[str, bytes | None]) -> dict:
    """Everything the template shows, from what a registered version stored: its tags and run
    metrics, the served checkpoint's metadata, the training summary and knobs, the trust and
    robustness tables and the PNGs (reliability, robustness, error gallery)."""
    promotion = {k.removeprefix("promotion_"): v for k, v in sorted(tags.items()) if k.startswith("promotion_")}
    return {
        "name": name, "version": version, "aliases": aliases, "members": members,
        "labels": list(meta.get("label_names", [])), "image_size": meta.get("image_size"),
        "meta": meta, "data": data, "knobs": knobs,
        "val_metrics": {k: v for k, v in sorted(metrics.items()) if k.startswith("val_") and "/" not in k},
        "intervals": interval_rows(tables.get("intervals")),
        "calibration": _table(tables.get("calibration")), "operating_points": _table(tables.get("operating_points")),
        "subgroups": _table(tables.get("subgroups")), "robustness": _table(tables.get("robustness")),
        "robustness_summary": {k.removeprefix("robustness/"): v for k, v in metrics.items()
                               if k.startswith("robustness/")},
        "failures": failure_notes(tables.get("intervals"), _with_set(tables.get("subgroups")), tables.get("robustness"),
                                  metrics),
        "promotion": promotion,
        "images": {k: data_uri(v) for k, v in images.items() if v},
        "code": {"commit": tags.get("code_version", "not recorded"), "zenml_run": tags.get("zenml_run_name", ""),
                 "zenml_run_id": tags.get("zenml_run_id", "")},
        "guardrails": meta.get("guardrails") or {},
    }


def _with_set(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    return None if frame is None or frame.empty or "set" not in frame.columns else frame
