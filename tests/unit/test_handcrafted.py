"""Handcrafted features against hand-computed values and the per-image library calls;
nearest-neighbour pairing."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
from skimage.feature import graycomatrix, graycoprops

from cxr.features.handcrafted import (FEATURE_NAMES, batch_features, edge_features, fit_feature_table,
                                      glcm_features, handcrafted_features, intensity_features)
from cxr.features.pairs import nearest_neighbours

RNG = np.random.default_rng(0)
RANDOM = RNG.integers(0, 256, (5, 24, 20), dtype=np.uint8)


def test_there_are_22_named_features():
    assert len(FEATURE_NAMES) == 22 and len(set(FEATURE_NAMES)) == 22
    assert batch_features(RANDOM).shape == (5, 22)


def test_intensity_on_a_hand_computed_image():
    image = np.array([[[0, 1, 2], [3, 4, 6]]], np.uint8)
    mean, std, median, low, high, p25, p75, p90, entropy, variance = intensity_features(image)[0]
    assert mean == pytest.approx(16 / 6) and median == pytest.approx(2.5)
    assert (low, high) == (0, 6) and entropy == pytest.approx(np.log2(6))
    assert variance == pytest.approx(np.var([0, 1, 2, 3, 4, 6])) and std == pytest.approx(np.std([0, 1, 2, 3, 4, 6]))
    assert (p25, p75, p90) == pytest.approx(tuple(np.percentile([0, 1, 2, 3, 4, 6], [25, 75, 90])))


def test_intensity_matches_numpy_on_random_images():
    out = intensity_features(RANDOM)
    flat = RANDOM.reshape(5, -1).astype(np.float64)
    np.testing.assert_allclose(out[:, 0], flat.mean(1))
    np.testing.assert_allclose(out[:, [2, 5, 6, 7]], np.percentile(flat, [50, 25, 75, 90], axis=1).T)
    np.testing.assert_allclose(out[:, 9], flat.var(1))


def test_glcm_on_a_hand_computed_image():
    image = np.array([[[0, 0, 1], [1, 2, 2]]], np.uint8)
    contrast, homogeneity, energy = glcm_features(image, distances=(1,))[0]
    assert contrast == pytest.approx(0.5) and homogeneity == pytest.approx(0.75)
    assert energy == pytest.approx(np.sqrt(12) / 8)


def test_glcm_matches_scikit_image():
    out = glcm_features(RANDOM)
    for b, image in enumerate(RANDOM):
        glcm = graycomatrix(image, distances=[1, 3, 5], angles=[0], levels=256, symmetric=True, normed=True)
        expected = [graycoprops(glcm, prop)[i, 0] for i in range(3) for prop in ("contrast", "homogeneity", "energy")]
        np.testing.assert_allclose(out[b], expected, rtol=1e-9)


def test_edges_match_opencv_sobel_magnitude():
    out = edge_features(RANDOM)
    for b, image in enumerate(RANDOM):
        magnitude = np.hypot(cv2.Sobel(image, cv2.CV_64F, 1, 0, ksize=3), cv2.Sobel(image, cv2.CV_64F, 0, 1, ksize=3))
        np.testing.assert_allclose(out[b], [magnitude.mean(), magnitude.std(), magnitude.max()], rtol=1e-4)


def test_threaded_frame_equals_one_batch():
    frame = handcrafted_features(RANDOM, ids=list("abcde"), batch_size=2, num_workers=2)
    assert list(frame.columns) == list(FEATURE_NAMES) and list(frame.index) == list("abcde")
    np.testing.assert_allclose(frame.to_numpy(), batch_features(RANDOM))
    with pytest.raises(ValueError, match="uint8"):
        handcrafted_features(RANDOM.astype(np.float32))


class TestNearestNeighbours:
    def test_self_is_never_chosen_even_among_duplicates(self):
        features = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.0, 5.1]])
        pairs = nearest_neighbours(features, k=1)
        assert pairs.indices[:, 0].tolist() == [1, 0, 3, 2]
        assert (pairs.indices != np.arange(4)[:, None]).all()

    def test_ties_go_to_the_lower_index(self):
        features = np.array([[0.0], [1.0], [-1.0], [2.0]])
        pairs = nearest_neighbours(features, k=2)
        assert pairs.indices[0].tolist() == [1, 2] and pairs.distances[0].tolist() == [1.0, 1.0]

    def test_k_larger_than_the_pool_is_refused(self):
        with pytest.raises(ValueError, match="k=3 neighbours asked for but only 2 other images"):
            nearest_neighbours(np.zeros((3, 2)), k=3)

    def test_mutual_filter_keeps_only_reciprocal_pairs(self):
        features = np.array([[0.0], [1.0], [3.0], [10.0]])
        pairs = nearest_neighbours(features, k=1, mutual=True)
        assert pairs.indices[:, 0].tolist() == [1, 0, 1, 2]
        assert pairs.keep[:, 0].tolist() == [True, True, False, False]
        assert pairs.pairs().tolist() == [[0, 1], [1, 0]]

    def test_matches_brute_force_on_random_points(self):
        features = RNG.normal(size=(300, 22))
        pairs = nearest_neighbours(features, k=3)
        d = np.linalg.norm(features[:, None] - features[None], axis=2)
        np.fill_diagonal(d, np.inf)
        np.testing.assert_array_equal(pairs.indices, np.argsort(d, axis=1, kind="stable")[:, :3])

    def test_ivf_search_finds_the_exact_neighbours_on_clustered_points(self):
        centres = RNG.normal(scale=10, size=(20, 22))
        features = centres[RNG.integers(0, 20, 4000)] + RNG.normal(size=(4000, 22))
        exact = nearest_neighbours(features, k=1)
        approx = nearest_neighbours(features, k=1, search="ivf", nprobe=8)
        assert (approx.indices != np.arange(4000)[:, None]).all()
        assert (approx.indices == exact.indices).mean() > 0.97
        np.testing.assert_allclose(approx.distances, np.linalg.norm(features - features[approx.indices[:, 0]],
                                                                    axis=1)[:, None], rtol=1e-4)
        with pytest.raises(ValueError, match="unknown neighbour search 'annoy'"):
            nearest_neighbours(features, search="annoy")


def test_feature_table_standardises_on_its_pool():
    values = pd.DataFrame({"a": [1.0, 2.0, 3.0], "flat": [5.0, 5.0, 5.0]}, index=["x", "y", "z"])
    table = fit_feature_table(values)
    standard = table.standardised()
    np.testing.assert_allclose(standard.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(standard[:, 0].std(), 1)
    assert table.scale[1] == 1.0 and (standard[:, 1] == 0).all()
