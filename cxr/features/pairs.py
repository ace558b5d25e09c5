"""Nearest-neighbour pairing in feature space: each image with its k nearest other images.

Two searches, Euclidean on the 22 standardised features:

- ``exact``: scikit-learn's ``NearestNeighbors`` brute force (chunked Cython arg-k-min).
  At 22 dimensions KD- and ball-trees are slower than brute force (measured: 57 s vs 3.8 s
  for 50k points); faiss's exact ``IndexFlatL2`` is no faster on 2 cores (63 s vs 61 s at
  200k), because both are bound by the n^2 distance products.
- ``ivf``: faiss's inverted-file index (k-means cells, ``nprobe`` of them searched), the
  only way to pair 200k images in seconds on a CPU. It is approximate: rows it cannot fill
  from the probed cells fall back to an exact search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.neighbors import NearestNeighbors

from cxr.registry import Registry

SEARCHES = Registry("neighbour search")
register_search = SEARCHES.register


@dataclass(frozen=True)
class NeighbourPairs:
    """``indices[i]`` are the k nearest other images of image i, ``distances[i]`` their distances.

    With the mutual filter, ``keep[i, j]`` is False where i is not among the k nearest of
    ``indices[i, j]``.
    """

    indices: np.ndarray
    distances: np.ndarray
    keep: np.ndarray

    def pairs(self) -> np.ndarray:
        """(P, 2) int array of kept (image, neighbour) pairs."""
        rows, cols = np.nonzero(self.keep)
        return np.column_stack([rows, self.indices[rows, cols]]).astype(np.int64)


def exact_search(features: np.ndarray, queries: np.ndarray, n_neighbors: int,
                 n_jobs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices) of the exact ``n_neighbors`` nearest rows of ``features``."""
    index = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute", n_jobs=n_jobs).fit(features)
    return index.kneighbors(queries)


@register_search("exact")
def exact_self_search(features: np.ndarray, n_neighbors: int, n_jobs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices) of every row's exact ``n_neighbors`` nearest rows, itself included."""
    return exact_search(features, features, n_neighbors, n_jobs)


@register_search("ivf")
def ivf_search(features: np.ndarray, n_neighbors: int, nprobe: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Approximate (distances, indices) from a faiss IVF-Flat index with about 4 sqrt(n) cells."""
    import faiss

    x = np.ascontiguousarray(features, dtype=np.float32)
    n, dim = x.shape
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
    index.cp.seed = seed
    index.train(x)
    index.add(x)
    index.nprobe = min(nprobe, nlist)
    squared, indices = index.search(x, n_neighbors)
    unfilled = np.nonzero((indices < 0).any(axis=1))[0]
    if len(unfilled):
        squared[unfilled], indices[unfilled] = exact_search(x, x[unfilled], n_neighbors)
        squared[unfilled] **= 2
    return np.sqrt(np.maximum(squared, 0)).astype(np.float64), indices.astype(np.int64)


def nearest_neighbours(features: np.ndarray, k: int = 1, mutual: bool = False, search: str = "exact",
                       nprobe: int = 32, n_jobs: int | None = None) -> NeighbourPairs:
    """The k nearest other rows of each row (self never chosen; ties go to the lower index)."""
    n = len(features)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k > n - 1:
        raise ValueError(f"k={k} neighbours asked for but only {n - 1} other images exist")
    extra = min(n, k + 1 + 8)
    distances, indices = SEARCHES.create_from(search, features, extra, knobs={"nprobe": nprobe, "n_jobs": n_jobs})
    order = np.lexsort((indices, distances), axis=1)
    distances = np.take_along_axis(distances, order, axis=1)
    indices = np.take_along_axis(indices, order, axis=1)
    not_self = indices != np.arange(n)[:, None]
    chosen = np.argsort(~not_self, axis=1, kind="stable")[:, :k]
    indices = np.take_along_axis(indices, chosen, axis=1)
    distances = np.take_along_axis(distances, chosen, axis=1)
    keep = np.ones_like(indices, dtype=bool)
    if mutual:
        keep = (indices[indices] == np.arange(n)[:, None, None]).any(axis=2)
    return NeighbourPairs(indices.astype(np.int64), distances, keep)
