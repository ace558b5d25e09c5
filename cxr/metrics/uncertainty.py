"""Bootstrap 95% intervals resampled by patient: a patient's images are drawn together, since
they are not independent evidence, and an image-level bootstrap would make intervals too narrow."""

from __future__ import annotations

from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

Statistic = Callable[[np.ndarray], float]


def patient_resamples(groups: Sequence, n_bootstrap: int = 1000, seed: int = 0) -> Iterator[np.ndarray]:
    """Row indices of ``n_bootstrap`` replicates: patients drawn with replacement, each bringing
    all of its rows."""
    codes, uniques = pd.factorize(pd.Series(list(groups), dtype=str))
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(uniques)))
    counts = np.bincount(codes, minlength=len(uniques))
    rng = np.random.default_rng(seed)
    for _ in range(n_bootstrap):
        drawn = rng.integers(0, len(uniques), size=len(uniques))
        lengths = counts[drawn]
        offsets = np.repeat(starts[drawn] - np.cumsum(lengths) + lengths, lengths)
        yield order[offsets + np.arange(lengths.sum())]


def bootstrap_intervals(statistics: Mapping[str, Statistic], groups: Sequence, n_bootstrap: int = 1000,
                        confidence: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """``name -> (value, low, high)``: each statistic on all rows, and the percentile interval of
    its patient-level bootstrap replicates (NaN replicates, e.g. AUC of a one-class draw, are
    left out; all NaN gives a NaN interval). All statistics share the same replicates."""
    rows = np.arange(len(groups))
    replicates = {name: [] for name in statistics}
    for drawn in patient_resamples(groups, n_bootstrap, seed):
        for name, statistic in statistics.items():
            replicates[name].append(statistic(drawn))
    tail = (1 - confidence) / 2 * 100
    out = {}
    for name, statistic in statistics.items():
        values = np.asarray(replicates[name], np.float64)
        values = values[np.isfinite(values)]
        low, high = np.percentile(values, [tail, 100 - tail]) if len(values) else (np.nan, np.nan)
        out[name] = (float(statistic(rows)), float(low), float(high))
    return out


def interval_frame(intervals: Mapping[str, tuple[float, float, float]]) -> pd.DataFrame:
    """One row per statistic: ``metric``, ``value``, ``low``, ``high``."""
    return pd.DataFrame([{"metric": name, "value": v, "low": lo, "high": hi}
                         for name, (v, lo, hi) in intervals.items()])
