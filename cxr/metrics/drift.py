"""Batch drift: is a new batch of images distributed like the images the model was validated on?

Three registered tests compare (a seeded sample of) the batch with a reference sample of the
val images, stored in the checkpoint at training time as ``guardrails.drift_*`` tensors:

- ``intensity``: the L1 distance between the batch's and the reference's mean gray-level
  histograms, its p-value by permuting images between the two;
- ``handcrafted``: scipy's two-sample KS test on each of the 22 handcrafted features, the
  p-values adjusted by Benjamini-Hochberg (scipy); the smallest adjusted value is the test's;
- ``embedding``: the unbiased squared MMD of the model's penultimate features (Gaussian kernel,
  median-distance bandwidth; Gretton et al., 2012), its p-value by permutation.

A test trips when its p-value is below ``alpha``. The reference is val, not train: val is
what an unseen batch from the training distribution looks like, while the model's features of
its own training images are pulled apart by the fit (the ``fit_guardrails`` step logs train
tested against the reference, which shows it). So each test passes a clean batch at rate
1 - alpha by construction; with the three tests (per ensemble member) the false-alarm rate is
up to three (per member) times alpha, with no correction across tests.
The reference holds per-image summaries (histograms, 22 features, penultimate features), never
pixels or ids. MMD and the histogram permutation test are a few lines of numpy: no maintained
library offers them without a deep-learning framework of its own (alibi-detect, torchdrift).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.stats import false_discovery_control, ks_2samp

from cxr.cft.head import penultimate_features
from cxr.errors import DataError
from cxr.features.handcrafted import FEATURE_NAMES, handcrafted_features
from cxr.models.checkpoint import EXTRA_PREFIX, Checkpoint
from cxr.registry import Registry
from cxr.runtime import seeded_sample

DRIFT_TESTS = Registry("drift test")
DriftTestName = DRIFT_TESTS.choice()
DRIFT_ACTIONS = Registry("drift action")
DriftAction = DRIFT_ACTIONS.choice()
PREFIX = EXTRA_PREFIX + "drift_"
BINS = 32
WEAK_REFERENCE = 30


class DriftConfig(BaseModel):
    """Which drift tests run on a batch and what a drifted batch does (``parameters.drift``)."""

    model_config = ConfigDict(extra="forbid")

    tests: list[DriftTestName] = Field(default_factory=lambda: DRIFT_TESTS.names(), description="registered tests")
    action: DriftAction = Field("warn", description="warn: log and go on; fail: stop before any prediction")
    alpha: float = Field(0.01, gt=0, lt=1, description="a test trips below this p-value")
    max_images: int = Field(500, ge=10, description="batch and reference images compared, at most (seeded sample)")
    permutations: int = Field(500, ge=50, description="permutations behind the intensity and embedding p-values")
    seed: int = 0

    @model_validator(mode="after")
    def _reachable_alpha(self) -> "DriftConfig":
        if self.alpha * (self.permutations + 1) <= 1:
            raise ValueError(f"alpha {self.alpha} is below the smallest p-value {self.permutations} permutations "
                             f"can give (1/{self.permutations + 1}): raise permutations or alpha")
        return self


def histograms(images: np.ndarray) -> np.ndarray:
    """(N, BINS) float32: each uint8 image's gray-level histogram as shares of its pixels."""
    flat = images.reshape(len(images), -1) >> 3  # 256 levels into 32 bins
    counts = np.stack([np.bincount(row, minlength=BINS) for row in flat]).astype(np.float32)
    return counts / flat.shape[1]


SUMMARIES = {"intensity": lambda checkpoint, images, device: histograms(images),
             "handcrafted": lambda checkpoint, images, device: handcrafted_features(images).to_numpy(np.float32),
             "embedding": lambda checkpoint, images, device: penultimate_features(checkpoint, images, device=device)
             .astype(np.float32)}


def summaries(checkpoint: Checkpoint, images: np.ndarray, device: str = "auto",
              tests: Sequence[str] = tuple(SUMMARIES)) -> dict[str, np.ndarray]:
    """What each of ``tests`` compares, per image: histograms, handcrafted features, penultimate features."""
    return {name: SUMMARIES[name](checkpoint, images, device) for name in tests}


def fit_drift(checkpoint: Checkpoint, val: np.ndarray, cfg: DriftConfig = DriftConfig(),
              device: str = "auto") -> Checkpoint:
    """``checkpoint`` with the val reference of every test stored as ``guardrails.drift_*`` tensors."""
    if len(val) < 2:
        raise ValueError(f"the drift reference needs at least 2 val images, got {len(val)}")
    if len(val) < WEAK_REFERENCE:
        warnings.warn(f"a drift reference of {len(val)} val images can only see large shifts", stacklevel=2)
    reference = summaries(checkpoint, seeded_sample(val, cfg.max_images, cfg.seed), device)
    state = checkpoint.state_dict | {PREFIX + name: torch.from_numpy(np.ascontiguousarray(values))
                                     for name, values in reference.items()}
    return replace(checkpoint, state_dict=state, meta=checkpoint.meta.model_copy(update={"drift": cfg.model_dump()}))


def reference(checkpoint: Checkpoint) -> dict[str, np.ndarray]:
    """The stored val reference by test name (empty if none was fitted)."""
    return {k[len(PREFIX):]: v.numpy().astype(np.float64) for k, v in checkpoint.state_dict.items()
            if k.startswith(PREFIX)}


def permutation_p(statistic, batch: np.ndarray, ref: np.ndarray, permutations: int, seed: int) -> tuple[float, float]:
    """(statistic, permutation p-value) of ``statistic(batch, ref)`` over random relabellings."""
    observed = statistic(batch, ref)
    pooled = np.concatenate([batch, ref])
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(permutations):
        order = rng.permutation(len(pooled))
        exceed += statistic(pooled[order[:len(batch)]], pooled[order[len(batch):]]) >= observed
    return float(observed), (exceed + 1) / (permutations + 1)


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """L1 distance between the mean histograms of two sets of per-image histograms."""
    return float(np.abs(a.mean(0) - b.mean(0)).sum())


def gaussian_kernel(x: np.ndarray, y: np.ndarray, bandwidth: float) -> np.ndarray:
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None] - 2 * x @ y.T
    return np.exp(-np.maximum(d, 0) / (2 * bandwidth ** 2))


def mmd2(kernel: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased squared MMD between the rows ``a`` and ``b`` index in a precomputed pooled kernel matrix."""
    kaa, kbb, kab = kernel[np.ix_(a, a)], kernel[np.ix_(b, b)], kernel[np.ix_(a, b)]
    n, m = len(a), len(b)
    return float((kaa.sum() - np.trace(kaa)) / (n * (n - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
                 - 2 * kab.mean())


def median_bandwidth(x: np.ndarray) -> float:
    """The median pairwise Euclidean distance (of at most 500 rows), the usual MMD bandwidth."""
    x = x[:500]
    d = np.sqrt(np.maximum((x * x).sum(1)[:, None] + (x * x).sum(1)[None] - 2 * x @ x.T, 0))
    return float(np.median(d[np.triu_indices(len(x), 1)])) or 1.0


@DRIFT_TESTS.register("intensity")
def intensity_test(batch: np.ndarray, ref: np.ndarray, cfg: DriftConfig) -> dict:
    """Mean-histogram L1 distance, permutation p-value."""
    statistic, p = permutation_p(histogram_distance, batch, ref, cfg.permutations, cfg.seed)
    return {"statistic": statistic, "p_value": p}


@DRIFT_TESTS.register("handcrafted")
def handcrafted_test(batch: np.ndarray, ref: np.ndarray, cfg: DriftConfig) -> dict:
    """Per-feature two-sample KS, Benjamini-Hochberg adjusted; the features that drifted."""
    p = np.array([ks_2samp(batch[:, j], ref[:, j]).pvalue for j in range(batch.shape[1])])
    adjusted = false_discovery_control(p, method="bh")
    drifted = [FEATURE_NAMES[j] for j in np.argsort(adjusted) if adjusted[j] < cfg.alpha]
    return {"statistic": float(len(drifted)), "p_value": float(adjusted.min()), "features": drifted}


@DRIFT_TESTS.register("embedding")
def embedding_test(batch: np.ndarray, ref: np.ndarray, cfg: DriftConfig) -> dict:
    """Unbiased MMD² of penultimate features, permutation p-value (the pooled kernel computed once)."""
    pooled = np.concatenate([batch, ref])
    kernel = gaussian_kernel(pooled, pooled, median_bandwidth(pooled[np.random.default_rng(cfg.seed).permutation(
        len(pooled))]))  # from the pooled rows, so every relabelling shares one kernel
    index = np.arange(len(pooled))
    statistic, p = permutation_p(lambda a, b: mmd2(kernel, a, b), index[:len(batch)], index[len(batch):],
                                 cfg.permutations, cfg.seed)
    return {"statistic": statistic, "p_value": p}


def drift_report(checkpoint: Checkpoint, images: np.ndarray, cfg: DriftConfig | None = None,
                 device: str = "auto") -> pd.DataFrame:
    """One row per test: statistic, p-value, alpha, drifted, and (handcrafted) which features."""
    cfg = cfg or DriftConfig(**{**checkpoint.meta.drift})
    columns = ["test", "statistic", "p_value", "alpha", "drifted", "features"]
    if not cfg.tests:
        return pd.DataFrame(columns=columns)
    ref = reference(checkpoint)
    if not ref:
        raise DataError("this model has no drift reference: it was registered before drift checks existed, or "
                        "without guardrails; retrain it, or set drift.tests: [] (or drift.action: warn to skip)")
    if len(images) < 2:
        raise DataError(f"a drift check needs at least 2 images, got {len(images)}")
    batch = summaries(checkpoint, seeded_sample(images, cfg.max_images, cfg.seed), device, cfg.tests)
    rows = []
    for name in cfg.tests:
        result = DRIFT_TESTS.create(name, batch[name].astype(np.float64), ref[name], cfg)
        rows.append({"test": name, "statistic": result["statistic"], "p_value": result["p_value"],
                     "alpha": cfg.alpha, "drifted": result["p_value"] < cfg.alpha,
                     "features": ",".join(result.get("features", []))})
    return pd.DataFrame(rows, columns=columns)


@DRIFT_ACTIONS.register("warn")
def warn_on_drift(report: pd.DataFrame) -> str:
    """The one-line summary; the run goes on."""
    return drift_summary(report)


@DRIFT_ACTIONS.register("fail")
def fail_on_drift(report: pd.DataFrame) -> str:
    """DataError with the summary when any test drifted."""
    summary = drift_summary(report)
    if report["drifted"].any():
        raise DataError(f"{summary}; drift.action is fail, so no prediction was written (set drift.action: warn "
                        "to predict anyway)")
    return summary


def drift_summary(report: pd.DataFrame) -> str:
    """``batch drifted: embedding (p=0.002), ...`` or ``no drift``, one line."""
    tripped = report[report["drifted"]]
    if tripped.empty:
        return "no drift: " + ", ".join(f"{r.test} p={r.p_value:.3g}" for r in report.itertuples())
    return "batch drifted: " + ", ".join(f"{r.test} (p={r.p_value:.3g}{'; ' + r.features if r.features else ''})"
                                         for r in tripped.itertuples())
