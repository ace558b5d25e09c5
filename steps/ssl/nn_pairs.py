"""nn_pairs step: each image paired with its nearest other images in feature space."""

from typing import Annotated, Tuple

import numpy as np
from zenml import log_metadata, step

from cxr.features.handcrafted import FeatureTable
from cxr.features.pairs import nearest_neighbours
from steps.caching import code_cache_policy


@step(cache_policy=code_cache_policy(__name__))
def nn_pairs(features: FeatureTable, k: int = 1, mutual: bool = False, search: str = "exact",
             nprobe: int = 32) -> Tuple[
    Annotated[np.ndarray, "pairs"],
    Annotated[np.ndarray, "pair_distances"],
]:
    """(P, 2) int64 pairs of row indices into the feature pool, and their Euclidean distances
    on standardised features; self is never chosen. ``mutual`` keeps reciprocal pairs only;
    ``search: ivf`` is faiss's approximate index for pools of 100k+ images.
    YAML: ``steps.nn_pairs.parameters.{k, mutual, search, nprobe}``.

    Raises:
        ValueError: ``k`` larger than the number of other images.
    """
    found = nearest_neighbours(features.standardised(), k=k, mutual=mutual, search=search, nprobe=nprobe)
    rows, cols = np.nonzero(found.keep)
    log_metadata({"pairs": int(len(rows)), "mean_distance": float(found.distances[rows, cols].mean())})
    return found.pairs(), found.distances[rows, cols]
