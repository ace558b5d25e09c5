"""TTA views, batched prediction, submissions and serving from files."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.ndimage import map_coordinates

from cxr.data.imageset import ImageSet, make_manifest
from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.data.sources import read_image_folder
from cxr.errors import DataError
from cxr.infer.predict import predict_proba
from cxr.infer.serving import predict_files, preprocess_files
from cxr.infer.submission import make_submission, write_submission
from cxr.infer.tta import REFERENCE_VIEWS, VIEWS, predict_imageset, tta_views
from cxr.models.checkpoint import Checkpoint
from cxr.models.classifier import Classifier, ModelConfig
from tests.helpers import random_checkpoint

SMOOTH = torch.from_numpy(cv2.GaussianBlur(np.random.default_rng(0).random((32, 32)).astype(np.float32), (0, 0), 2))


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    return random_checkpoint(0, 32, ["pneumonia"])


def forward_by_hand(checkpoint: Checkpoint, images: np.ndarray) -> np.ndarray:
    """Sigmoid of the checkpoint's model on uint8 (N, S, S) images normalised as (x/255 - mean) / std."""
    x = (torch.from_numpy(images).float()[:, None] / 255 - checkpoint.meta.mean) / checkpoint.meta.std
    with torch.no_grad():
        return torch.sigmoid(checkpoint.build_model()(x)).numpy()


def rotated_by_hand(image: np.ndarray, degrees: float) -> np.ndarray:
    """Bilinear sample of ``image`` at each output pixel's coordinates rotated about the centre
    (x' = c + cos a (x - c) - sin a (y - c), y' = c + sin a (x - c) + cos a (y - c)), edges replicated."""
    a, c = math.radians(degrees), (image.shape[0] - 1) / 2
    y, x = np.mgrid[:image.shape[0], :image.shape[1]] - c
    source = [c + math.sin(a) * x + math.cos(a) * y, c + math.cos(a) * x - math.sin(a) * y]
    return map_coordinates(image, source, order=1, mode="nearest")


def test_reference_views():
    assert REFERENCE_VIEWS == ("original", "hflip", "rotate+5", "rotate-5", "zoom")
    with pytest.raises(ValueError, match="unknown TTA view"):
        tta_views(["vflip"])


def test_original_and_hflip_views_are_identity_and_mirror():
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(VIEWS.create("original")(x), x)
    torch.testing.assert_close(VIEWS.create("hflip")(x), torch.flip(x, dims=(-1,)))


@pytest.mark.parametrize("name,degrees", [("rotate+5", 5.0), ("rotate-5", -5.0)])
def test_rotate_views_turn_about_the_centre(name: str, degrees: float):
    got = VIEWS.create(name)(SMOOTH[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, rotated_by_hand(SMOOTH.numpy(), degrees), atol=1e-5)


def test_zoom_view_is_a_centre_crop_by_1_1_resized_back():
    got = VIEWS.create("zoom")(SMOOTH[None, None])[0, 0].numpy()
    crop = round(32 / 1.1)
    start = (32 - crop) // 2
    expected = cv2.resize(SMOOTH.numpy()[start:start + crop, start:start + crop], (32, 32),
                          interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_tta_is_the_mean_of_single_view_predictions(checkpoint: Checkpoint):
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32), dtype=np.uint8)
    model = checkpoint.build_model()
    per_view = [predict_proba(model, images, 0.5, 0.25, batch_size=2, views=tta_views([v]))
                for v in REFERENCE_VIEWS]
    stacked = predict_proba(model, images, 0.5, 0.25, batch_size=2, views=tta_views(REFERENCE_VIEWS))
    np.testing.assert_allclose(stacked, np.mean(per_view, axis=0), atol=1e-5)


def test_predict_imageset_checks_image_size(checkpoint: Checkpoint):
    ids = ["a", "b"]
    imageset = ImageSet(make_manifest(ids, ids), (), np.zeros((2, 0), np.float32), np.zeros((2, 0), bool),
                        images=np.zeros((2, 48, 48), np.uint8))
    with pytest.raises(ValueError, match="trained at 32x32"):
        predict_imageset(checkpoint, imageset)
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32), dtype=np.uint8)
    frame = predict_imageset(checkpoint, imageset.with_images(images), ("original",))
    assert list(frame.columns) == ["id", "pneumonia"] and frame["id"].tolist() == ids
    np.testing.assert_allclose(frame[["pneumonia"]].to_numpy(), forward_by_hand(checkpoint, images), atol=1e-5)


def test_submission_follows_sample_order_and_columns(tmp_path: Path):
    predictions = pd.DataFrame({"id": ["t1", "t0"], "Pneumonia": [0.9, 0.1]})
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"id": ["t0", "t1"], "pneumonia": [0.5, 0.5]}).to_csv(sample, index=False)
    out = make_submission(predictions, sample)
    assert list(out.columns) == ["id", "pneumonia"] and out.values.tolist() == [["t0", 0.1], ["t1", 0.9]]
    path = write_submission(out, tmp_path / "sub" / "submission.csv")
    assert path.read_text() == "id,pneumonia\nt0,0.100000\nt1,0.900000\n"


def test_submission_errors_name_columns_and_ids(tmp_path: Path):
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"id": ["t0", "t9"], "pneumonia": 0.5}).to_csv(sample, index=False)
    with pytest.raises(DataError, match="'t9'"):
        make_submission(pd.DataFrame({"id": ["t0"], "pneumonia": [0.1]}), sample)
    with pytest.raises(DataError, match=r"\['pneumonia'\]"):
        make_submission(pd.DataFrame({"id": ["t0", "t9"], "effusion": [0.1, 0.2]}), sample)


def test_predict_files_preprocesses_like_training(checkpoint: Checkpoint, class_tree: Path):
    folder = class_tree / "NORMAL"
    cv2.imwrite(str(folder / "wide.png"), np.random.default_rng(2).integers(0, 256, (20, 50), dtype=np.uint8))
    training = preprocess_imageset(read_image_folder(folder), PreprocessConfig(**checkpoint.meta.preprocess),
                                   progress=False)
    paths = training.manifest["path"].tolist()
    served = preprocess_files(checkpoint, paths, training.ids)
    np.testing.assert_array_equal(served.images, training.images)
    frame = predict_files(checkpoint, paths, ids=training.ids)
    assert frame["id"].tolist() == training.ids
    np.testing.assert_allclose(frame[["pneumonia"]].to_numpy(), forward_by_hand(checkpoint, training.images),
                               atol=1e-5)


def test_predicting_on_a_named_device_leaves_the_model_trainable():
    model = Classifier(ModelConfig(backbone="resnet10t"), 1)
    predict_proba(model, np.zeros((2, 32, 32), np.uint8), 0.5, 0.2, device=torch.device("cpu:0"))
    assert not any(t.is_inference() for t in [*model.parameters(), *model.buffers()])
    model.train()(torch.zeros(2, 1, 32, 32)).sum().backward()
