"""Batch drift against the stored val reference: a held-out clean batch passes every test; the
same images inverted or blurred, or images from another source, trip them; ``fail`` raises and
``warn`` does not; the reference holds per-image summaries only."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cxr.errors import DataError
from cxr.metrics.drift import DRIFT_ACTIONS, DriftConfig, drift_report, fit_drift, histograms, reference
from tests.helpers import random_checkpoint, synthetic_xray

SIZE = 48


def xrays(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([synthetic_xray(rng, SIZE, positive=i % 3 == 0) for i in range(n)])


@pytest.fixture(scope="module")
def guarded():
    return fit_drift(random_checkpoint(0, SIZE), xrays(200, seed=1), DriftConfig(permutations=200))


def tripped(report) -> set[str]:
    return set(report.loc[report["drifted"], "test"])


def test_a_held_out_clean_batch_passes_every_test(guarded):
    report = drift_report(guarded, xrays(120, seed=2))
    assert list(report["test"]) == ["embedding", "handcrafted", "intensity"]  # registry (sorted) order
    assert tripped(report) == set(), report.to_string()
    assert (report["p_value"] > 0.01).all()


@pytest.mark.parametrize("shift, expected", [
    (lambda x: 255 - x, {"intensity", "handcrafted", "embedding"}),
    (lambda x: np.stack([cv2.GaussianBlur(i, (0, 0), 2.0) for i in x]), {"handcrafted", "embedding"}),
    (lambda x: np.clip(x.astype(int) * 0.6 + 90, 0, 255).astype(np.uint8), {"intensity", "handcrafted", "embedding"}),
])
def test_shifted_batches_trip_the_tests_that_see_the_shift(guarded, shift, expected: set[str]):
    report = drift_report(guarded, shift(xrays(120, seed=2)))
    assert expected <= tripped(report), report.to_string()


def test_images_from_another_source_drift(guarded, real_data_dir):
    files = sorted((real_data_dir / "nih1000-64" / "images").glob("*.png"))[:80]
    nih = np.stack([cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (SIZE, SIZE)) for f in files])
    assert tripped(drift_report(guarded, nih)) == {"intensity", "handcrafted", "embedding"}


def test_the_handcrafted_test_names_the_features_that_moved(guarded):
    report = drift_report(guarded, 255 - xrays(60, seed=3)).set_index("test")
    assert "mean" in report.loc["handcrafted", "features"].split(",")
    assert report.loc["handcrafted", "statistic"] == len(report.loc["handcrafted", "features"].split(","))


def test_fail_raises_before_anything_else_and_warn_goes_on(guarded):
    drifted = drift_report(guarded, 255 - xrays(40, seed=4))
    clean = drift_report(guarded, xrays(40, seed=5))
    with pytest.raises(DataError, match=r"batch drifted: .*intensity \(p=.*no prediction was written"):
        DRIFT_ACTIONS.create("fail", drifted)
    assert DRIFT_ACTIONS.create("fail", clean).startswith("no drift: embedding p=")
    assert DRIFT_ACTIONS.create("warn", drifted).startswith("batch drifted:")


def test_the_reference_is_per_image_summaries_of_at_most_max_images(guarded):
    ref = reference(guarded)
    assert {k: v.shape[1] for k, v in ref.items()} == {"intensity": 32, "handcrafted": 22, "embedding": 512}
    assert {len(v) for v in ref.values()} == {200}
    small = fit_drift(random_checkpoint(0, SIZE), xrays(50, 1), DriftConfig(max_images=20))
    assert {len(v) for v in reference(small).values()} == {20}
    assert guarded.meta.drift["permutations"] == 200 and "guardrails.drift_embedding" not in guarded.model_state
    np.testing.assert_allclose(histograms(xrays(3, 0)).sum(1), 1, rtol=1e-6)


def test_a_model_without_a_reference_or_a_one_image_batch_is_a_clear_error(guarded):
    with pytest.raises(DataError, match="no drift reference"):
        drift_report(random_checkpoint(0, SIZE), xrays(20, 0))
    with pytest.raises(DataError, match="at least 2 images"):
        drift_report(guarded, xrays(1, 0))


def test_an_alpha_no_permutation_count_can_reach_is_refused_and_no_tests_is_an_empty_report(guarded):
    with pytest.raises(ValueError, match="below the smallest p-value"):
        DriftConfig(alpha=0.001, permutations=500)
    assert drift_report(guarded, xrays(5, 0), DriftConfig(tests=[])).empty


def test_a_small_val_set_still_gets_a_reference_with_a_warning():
    with pytest.warns(UserWarning, match="8 val images can only see large shifts"):
        small = fit_drift(random_checkpoint(0, SIZE), xrays(8, 1))
    assert {len(v) for v in reference(small).values()} == {8}
    with pytest.raises(ValueError, match="at least 2 val images"):
        fit_drift(random_checkpoint(0, SIZE), xrays(1, 1))
