"""Grad-CAM maps and the predict CLI."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

import run
from cxr.infer.explain import gradcam_maps, write_overlays
from cxr.infer.serving import predict_files, preprocess_files
from cxr.models.checkpoint import save_checkpoint
from tests.helpers import random_checkpoint

LABELS = ["Effusion", "Mass", "Nodule"]


def test_gradcam_is_the_linear_head_weighted_feature_map():
    checkpoint = random_checkpoint(0, 64, LABELS, clahe=False)
    weight = checkpoint.state_dict["head.fc.weight"]
    weight[:, ::2] = weight[:, ::2].abs() * 4  # a map with positive parts for every label
    image = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    maps = gradcam_maps(checkpoint, image, [2, 0], device="cpu")
    assert maps.shape == (2, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    model = checkpoint.build_model()
    with torch.no_grad():
        features = model.backbone((torch.from_numpy(image).float()[None, None] / 255 - 0.5) / 0.25)[0]
    for k, j in enumerate([2, 0]):
        cam = torch.relu((model.head.fc.weight[j][:, None, None] * features).sum(0)).detach().numpy()
        cam = cv2.resize(cam, (64, 64))
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
        assert np.corrcoef(cam.ravel(), maps[k].ravel())[0, 1] > 0.99


def test_predict_cli_prints_probabilities_and_writes_overlays(tmp_path: Path, capsys):
    checkpoint = random_checkpoint(0, 64, LABELS, clahe=False)
    folder = save_checkpoint(checkpoint, tmp_path / "ckpt")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(images / name), rng.integers(0, 256, (80, 70), dtype=np.uint8))
    assert run.main(["predict", str(images), "--checkpoint", str(folder), "--gradcam", str(tmp_path / "cam"),
                     "--top", "2", "--csv", str(tmp_path / "p.csv")]) == 0
    printed = capsys.readouterr().out
    expected = predict_files(checkpoint, [str(images / "a.png"), str(images / "b.png")], ["a.png", "b.png"])
    written = pd.read_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(written[LABELS].to_numpy(), expected[LABELS].to_numpy(), atol=1e-6)
    assert "Effusion" in printed and f"{expected.loc[0, 'Mass']:.4f}" in printed
    overlay = cv2.imread(str(tmp_path / "cam" / "a_gradcam.png"))
    assert overlay.shape == (22 + 256, 2 * 256, 3)  # title strip + 4x-upscaled 64 px tile, top 2 side by side
    served = preprocess_files(checkpoint, [str(images / "a.png")]).images[0]
    reference = write_overlays(checkpoint, served, expected.loc[0, LABELS].to_numpy(float), tmp_path / "ref.png",
                               top=2, device="cpu")
    np.testing.assert_array_equal(overlay, cv2.imread(str(reference)))
