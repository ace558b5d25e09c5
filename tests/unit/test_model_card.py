"""The model card page from plain data: every section, the figures as given, images inline,
nothing fetched from the network, text escaped, and the error gallery's choice of images."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.infer.tta import SINGLE_VIEW, predict_imageset
from cxr.lifecycle.model_card import (SECTIONS, card_context, confident_errors, error_gallery, png_bytes,
                                      render_model_card, training_summary)
from cxr.metrics.calibration import CalibrationConfig
from cxr.metrics.operating_points import OperatingPointConfig
from cxr.metrics.plots import reliability_diagrams
from cxr.metrics.trust import calibrated_checkpoint, pooled_curves, trust_metrics, trust_report
from tests.helpers import random_checkpoint, write_images

POINTS = OperatingPointConfig(n_bootstrap=50)


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> dict:
    """A card of a calibrated random checkpoint on 24 generated images with a sex column."""
    raw_images = write_images(tmp_path_factory.mktemp("val"), 24)
    raw_images.manifest["sex"] = ["M", "F"] * 12
    val = preprocess_imageset(raw_images, PreprocessConfig(image_size=32), progress=False)
    plain = random_checkpoint(labels=("opacity",))
    raw = predict_imageset(plain, val, SINGLE_VIEW)["opacity"].to_numpy()[:, None]
    checkpoint = calibrated_checkpoint(plain, val, raw, CalibrationConfig(), POINTS)
    report = trust_report(checkpoint, {"val": (val, raw)}, POINTS)
    metrics = trust_metrics(report) | {"val_mean_auc": 0.61234, "robustness/mean_corruption_auc": 0.55,
                                       "val_auc_opacity": 0.42, "val_auc_other": 0.7}
    gallery = error_gallery(checkpoint, val, raw, count=3, device="cpu")
    robustness = pd.DataFrame({"corruption": ["none", "blur", "blur", "noise"], "severity": [0, 1, 2, 1],
                               "auc": [0.6, 0.5, 0.4, 0.58]})
    tags = {"promotion_promote": "True", "promotion_reason": "better by 0.01", "code_version": "abc123",
            "zenml_run_name": "run-1", "zenml_run_id": "uuid"}
    context = card_context(
        "cxr-<test>", 3, ["champion"], tags, metrics, checkpoint.meta.model_dump(), [],
        training_summary(val, {"source": "images", "path": "/data/x"}), {"train": {"epochs": 2, "lr": 0.01}},
        {"calibration": report.calibration, "operating_points": report.operating_points,
         "intervals": report.intervals, "subgroups": report.subgroups, "robustness": robustness},
        {"reliability": png_bytes(reliability_diagrams(pooled_curves(checkpoint, {"val": (val, raw)}))),
         "robustness": None, "gallery": png_bytes(gallery)})
    return {"html": render_model_card(context), "metrics": metrics, "gallery": gallery, "report": report}


def test_every_section_is_present_once(card):
    for section in SECTIONS:
        assert card["html"].count(f'<section id="{section}">') == 1, section


def test_figures_shown_are_the_metrics_given(card):
    shown = dict(re.findall(r'data-metric="([^"]+)">([^<]+)<', card["html"]))
    assert shown["val_mean_auc"] == "0.6123" and shown["robustness/mean_corruption_auc"] == "0.5500"
    for key in ("trust/val_mean_auc", "trust/val_mean_auc_low", "trust/val_mean_auc_high", "trust/val_mean_brier"):
        assert shown[key] == f"{card['metrics'][key]:.4f}", key


def test_images_are_inline_pngs_and_nothing_is_fetched(card):
    html = card["html"]
    sources = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(sources) == 2, "reliability and gallery (no robustness PNG was given)"
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size[0] > 50
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<link" not in html and "<script" not in html


def test_text_is_escaped_and_ids_stay_out(card):
    assert "cxr-&lt;test&gt;" in card["html"] and "cxr-<test>" not in card["html"]
    assert "img0" not in card["html"], "image ids never reach the card"


def test_failure_notes_name_the_worst_corruption_and_small_subgroups(card):
    assert "weakest under blur (mean AUC 0.4500" in card["html"]
    assert "subgroup rows have under 10 positives or negatives" in card["html"]
    assert "opacity: val AUC 0.4200, no better than chance" in card["html"] and "other: val AUC" not in card["html"]


def test_confident_errors_pick_the_highest_scored_negatives_and_lowest_positives():
    y = np.array([[0, 1], [0, 1], [1, 0], [1, 0]], float)
    p = np.array([[0.9, 0.2], [0.3, 0.8], [0.1, 0.7], [0.6, 0.05]])
    mask = np.ones_like(y, bool)
    mask[0, 0] = False
    errors = confident_errors(y, p, mask, count=2)
    assert errors["false_positives"] == [(2, 1), (1, 0)]
    assert errors["false_negatives"] == [(2, 0), (0, 1)]


def test_gallery_holds_a_row_of_false_positives_over_one_of_false_negatives(card):
    width, height = card["gallery"].size
    assert height > 100 and width == pytest.approx(3 * height / 2, rel=0.2)
