"""Corruption suite and robustness scoring on generated images and a trained model."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from cxr.metrics.robustness import RobustnessConfig, robustness_summary, robustness_table
from tests.helpers import random_checkpoint, synthetic_xray

NAMES = ["contrast", "gamma", "gaussian_blur", "gaussian_noise", "invert", "jpeg", "resample", "rotate", "zoom"]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([synthetic_xray(rng, 64, positive=i % 2 == 0) for i in range(6)])


def test_the_suite_holds_the_corruptions_of_the_issue():
    assert CORRUPTIONS.names() == NAMES and SEVERITIES == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("name", NAMES)
def test_each_corruption_changes_images_at_severity_1_and_more_at_5(images: np.ndarray, name: str):
    mild, severe = corrupt(images, name, 1), corrupt(images, name, 5)
    for out in (mild, severe):
        assert out.shape == images.shape and out.dtype == np.uint8
    change = [np.abs(out.astype(np.float64) - images).mean() for out in (mild, severe)]
    assert 0 < change[0] < change[1], change
    np.testing.assert_array_equal(corrupt(images, name, 3, seed=7), corrupt(images, name, 3, seed=7))


def test_full_inversion_is_the_negative(images: np.ndarray):
    np.testing.assert_array_equal(corrupt(images, "invert", 5), 255 - images)


def test_a_severity_outside_1_to_5_is_refused(images: np.ndarray):
    with pytest.raises(ValueError, match="severity must be one of"):
        corrupt(images, "jpeg", 6)
    with pytest.raises(ValueError, match="severities must be a non-empty subset"):
        RobustnessConfig(severities=[0, 1])
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        RobustnessConfig(corruptions=["fog"])


def test_robustness_table_scores_every_corruption_and_severity(synthetic_split):
    from cxr.models.classifier import ModelConfig
    from cxr.train.config import TrainConfig
    from cxr.train.loop import fit

    train, val = synthetic_split
    checkpoint = fit(train, val, ModelConfig(backbone="resnet10t"),
                     TrainConfig(epochs=3, batch_size=16, lr=3e-3, num_threads=2), progress=False).checkpoint
    cfg = RobustnessConfig(corruptions=["invert", "gaussian_noise"], severities=[1, 5], max_images=None)
    table = robustness_table(checkpoint, val, cfg, device="cpu", progress=False)
    assert table[["corruption", "severity"]].values.tolist() == [["none", 0], ["invert", 1], ["invert", 5],
                                                                 ["gaussian_noise", 1], ["gaussian_noise", 5]]
    invert = table.set_index(["corruption", "severity"])["auc"]
    assert invert["none", 0] > 0.8 and invert["invert", 5] < invert["invert", 1]
    summary = robustness_summary(table)
    assert summary["mean_corruption_auc"] == pytest.approx(table["auc"].iloc[1:].mean())
    assert summary["invert_auc"] == pytest.approx(table["auc"].iloc[1:3].mean())
    assert summary["relative_corruption_auc"] == pytest.approx(summary["mean_corruption_auc"] / summary["clean_auc"])
    adapted = robustness_table(checkpoint, val, cfg.model_copy(update={"adabn": True}), device="cpu", progress=False)
    assert adapted["auc"].iloc[0] != table["auc"].iloc[0] or adapted["auc"].iloc[2] != table["auc"].iloc[2]


def test_robustness_refuses_an_unlabelled_split(tmp_path):
    from cxr.errors import DataError
    from tests.helpers import write_images

    from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
    from cxr.adapt.target import unlabelled

    part = unlabelled(preprocess_imageset(write_images(tmp_path, 4), PreprocessConfig(image_size=32), progress=False))
    with pytest.raises(DataError, match="decoded, labelled images"):
        robustness_table(random_checkpoint(), part, RobustnessConfig(), device="cpu", progress=False)


def test_max_images_draws_a_seeded_sample(synthetic_split):
    from cxr.metrics.robustness import scored_sample

    train, _ = synthetic_split
    a = scored_sample(train, RobustnessConfig(max_images=10))
    assert len(a) == 10 and a.ids == scored_sample(train, RobustnessConfig(max_images=10)).ids
    assert len(scored_sample(train, RobustnessConfig(max_images=None))) == len(train)
