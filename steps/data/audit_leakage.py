"""audit_leakage step: shared patients, exact and near duplicates across the run's image sets."""

from typing import Annotated, List, Tuple

import mlflow
import pandas as pd
from zenml import log_metadata, step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.data.leakage import AuditConfig, act_on_leaks, find_leaks, leak_counts, leak_pairs_grid
from cxr.data.split import SPLIT_NAMES
from steps.caching import code_cache_policy

logger = get_logger(__name__)


@step(experiment_tracker=True, cache_policy=code_cache_policy(__name__))
def audit_leakage(images: ImageSet, others: List[ImageSet], other_names: List[str], cfg: AuditConfig) -> Tuple[
    Annotated[pd.DataFrame, "leaks"],
    Annotated[dict, "leak_counts"],
]:
    """Before training, look for the same patient, the same pixels, or a flipped, cropped or
    re-encoded copy across train, val, proxy and ``others`` (external sets, the test folder).

    Counts go to MLflow as ``leaks/*`` metrics, the findings (hashed ids only) as
    ``leakage/leaks.csv`` and example pairs as ``leakage/pairs.png``; then ``cfg.action``
    decides: ``warn`` logs a warning, ``fail`` stops the run before training.
    YAML: ``parameters.audit``.

    Raises:
        DataError: ``audit.action: fail`` and something leaks.
    """
    parts = {name: images.split(name) for name in SPLIT_NAMES} | dict(zip(other_names, others))
    leaks = find_leaks({name: part for name, part in parts.items() if len(part)}, cfg)
    counts = leak_counts(leaks)
    mlflow.log_metrics({f"leaks/{key.replace('~', '-vs-')}": value for key, value in counts.items()})
    mlflow.log_text(leaks.to_csv(index=False), "leakage/leaks.csv")
    grid = leak_pairs_grid(parts, leaks, cfg.examples)
    if grid is not None:
        mlflow.log_image(grid, artifact_file="leakage/pairs.png")
    logger.info("leakage audit over %s: %s", {name: len(part) for name, part in parts.items()}, counts)
    log_metadata({"leak_counts": counts})
    act_on_leaks(leaks, cfg)
    return leaks, counts
