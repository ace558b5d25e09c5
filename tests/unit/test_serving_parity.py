"""Serving parity: files scored by ``predict_files``, ``predict_chunks`` and the registered pyfunc
equal an independent path written out here (PIL decode, ITU-R 601 gray, pad or crop, OpenCV
area/linear resize and CLAHE, normalise, forward, sigmoid), on real images of other sizes than
the model's: full-resolution COVID images up to 3,604 px, NIH RGBA PNGs and a generated
16-bit PNG.

PIL and OpenCV decode every file used here to the same pixels, and the gray images have equal
channels, so the two paths agree pixel for pixel; probabilities agree to float rounding.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxr.data.imageset import ImageSet, make_manifest
from cxr.infer.batch import predict_chunks
from cxr.infer.serving import predict_files, preprocess_files
from cxr.models.checkpoint import Checkpoint
from tests.helpers import pil_gray, random_checkpoint

SIZE = 48
COVID = ["figure1/images/COVID-00005.jpg", "figure1/images/COVID-00006.jpg", "figure1/images/COVID-00001.jpg",
         "figure1/images/COVID-00015a.png", "figure1/images/COVID-00020.jpg", "figure1/images/COVID-00048.png",
         "actualmed/images/CR.1.2.840.113564.1722810170.20200319202613984410.1003000225002.png"]
# 2x2 tiles: on smaller tiles of a 48 px image OpenCV rounds clip limits 2 and 3 to the same bin count
SETTINGS = {"pad, default CLAHE": {},
            "crop, CLAHE 3.0 on 2x2": {"resize_policy": "crop", "clahe_clip_limit": 3.0, "clahe_tile_grid": 2},
            "pad, no CLAHE": {"clahe": False}}


def rgba_pngs(folder: Path, n: int) -> list[Path]:
    """The first ``n`` RGBA PNGs of ``folder`` by name."""
    return [p for p in sorted(folder.glob("*.png")) if Image.open(p).mode == "RGBA"][:n]


@pytest.fixture(scope="module")
def files(real_data_dir: Path, tmp_path_factory) -> list[str]:
    """Real images of mixed size and layout plus a 40x30 16-bit PNG (upscaled, unlike the rest)."""
    sixteen = tmp_path_factory.mktemp("sixteen") / "sixteen.png"
    rng = np.random.default_rng(0)
    ramp = np.linspace(1000, 60000, 40)[None, :] + rng.normal(0, 500, (30, 40))
    cv2.imwrite(str(sixteen), ramp.clip(0, 65535).astype(np.uint16))
    covid = [real_data_dir / "covid-fullres" / name for name in COVID]
    return [str(p) for p in covid + rgba_pngs(real_data_dir / "nih1000-64" / "images", 2) + [sixteen]]


def square_by_hand(gray: np.ndarray, policy: str) -> np.ndarray:
    """Zero-pad the short side (extra row/column at the bottom/right), or take the centred square."""
    h, w = gray.shape
    if policy == "crop":
        side = min(h, w)
        return gray[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    side = max(h, w)
    out = np.zeros((side, side), np.uint8)
    out[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = gray
    return out


def pixels_by_hand(path: str, settings: dict) -> np.ndarray:
    """Training preprocessing spelt out: square, area (down) or linear (up) resize, then CLAHE."""
    square = square_by_hand(pil_gray(path), settings["resize_policy"])
    if square.shape[0] != SIZE:
        interpolation = cv2.INTER_AREA if square.shape[0] > SIZE else cv2.INTER_LINEAR
        square = cv2.resize(square, (SIZE, SIZE), interpolation=interpolation)
    if not settings["clahe"]:
        return square
    tiles = (settings["clahe_tile_grid"],) * 2
    return cv2.createCLAHE(clipLimit=settings["clahe_clip_limit"], tileGridSize=tiles).apply(square)


def probabilities_by_hand(checkpoint: Checkpoint, paths: list[str]) -> np.ndarray:
    """(N, L) sigmoid outputs of the checkpoint's model on the hand-preprocessed files."""
    pixels = np.stack([pixels_by_hand(p, checkpoint.meta.preprocess) for p in paths])
    x = (torch.from_numpy(pixels).float()[:, None] / 255 - checkpoint.meta.mean) / checkpoint.meta.std
    with torch.no_grad():
        return torch.sigmoid(checkpoint.build_model()(x)).numpy()


def test_the_files_cover_sizes_layouts_and_bit_depths(files: list[str]):
    images = [Image.open(p) for p in files]
    assert max(max(i.size) for i in images) == 4032 and max(i.size[0] for i in images) == 3604
    assert {i.mode for i in images} == {"L", "RGB", "RGBA", "I;16"}
    assert min(max(i.size) for i in images) < SIZE < 64


@pytest.mark.parametrize("name", SETTINGS)
def test_served_pixels_are_the_training_rule_by_hand(files: list[str], name: str):
    checkpoint = random_checkpoint(0, SIZE, **SETTINGS[name])
    served = preprocess_files(checkpoint, files).images
    for path, image in zip(files, served):
        np.testing.assert_array_equal(image, pixels_by_hand(path, checkpoint.meta.preprocess), err_msg=path)


def test_predict_files_and_chunks_equal_the_independent_path(files: list[str]):
    checkpoint = random_checkpoint(1, SIZE)
    expected = probabilities_by_hand(checkpoint, files)
    ids = [Path(p).stem for p in files]
    one_shot = predict_files(checkpoint, files, ids)
    np.testing.assert_allclose(one_shot[["a", "b"]].to_numpy(), expected, atol=1e-5)
    imageset = ImageSet(make_manifest(ids, files), (), np.zeros((len(ids), 0), np.float32),
                        np.zeros((len(ids), 0), bool))
    chunked = pd.concat(predict_chunks(checkpoint, imageset, chunk_size=4, progress=False))
    assert chunked["id"].tolist() == ids
    np.testing.assert_allclose(chunked[["a", "b"]].to_numpy(), expected, atol=1e-5)


def test_registered_pyfunc_equals_the_independent_path(files: list[str], registry):
    import mlflow

    from steps.registry.lifecycle import log_served_model

    checkpoint = random_checkpoint(2, SIZE, **SETTINGS["crop, CLAHE 3.0 on 2x2"])
    with mlflow.start_run():
        version = log_served_model(checkpoint, "cxr-parity-test")
    served = mlflow.pyfunc.load_model(f"models:/cxr-parity-test/{version}")
    got = served.predict(pd.DataFrame({"path": files}))
    assert got["id"].tolist() == files
    np.testing.assert_allclose(got[["a", "b"]].to_numpy(), probabilities_by_hand(checkpoint, files), atol=1e-5)


def test_registered_pyfunc_takes_base64_bytes_and_logs_a_generated_example(files: list[str], registry):
    import base64
    import json

    import mlflow

    from steps.registry.lifecycle import log_served_model

    checkpoint = random_checkpoint(3, SIZE)
    with mlflow.start_run():
        version = log_served_model(checkpoint, "cxr-bytes-test")
    uri = f"models:/cxr-bytes-test/{version}"
    served = mlflow.pyfunc.load_model(uri)
    images = [base64.b64encode(Path(p).read_bytes()).decode() for p in files] + ["AAAA"]
    got = served.predict(pd.DataFrame({"id": [f"i{k}" for k in range(len(images))], "image": images}))
    np.testing.assert_allclose(got[["a", "b"]].to_numpy()[:-1], probabilities_by_hand(checkpoint, files), atol=1e-5)
    assert got["error"].tolist() == [""] * len(files) + [f"corrupt or unreadable image file: row {len(files)}"]
    inputs = {c["name"] for c in served.metadata.get_input_schema().to_dict()}
    assert inputs == {"id", "image", "path"}
    example = json.loads(Path(mlflow.artifacts.download_artifacts(f"{uri}/serving_input_example.json")).read_text())
    assert example["dataframe_split"]["columns"] == ["id", "image"] and example["params"] == {"guardrails": True}
