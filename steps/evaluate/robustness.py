"""robustness step: the model's AUC on val under acquisition corruptions at five severities."""

from typing import Annotated, Tuple

import mlflow
import pandas as pd
from PIL import Image
from zenml import log_metadata, step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.metrics.plots import robustness_curves
from cxr.metrics.robustness import RobustnessConfig, robustness_summary, robustness_table
from cxr.models.checkpoint import Checkpoint
from steps.caching import code_cache_policy

logger = get_logger(__name__)


@step(experiment_tracker=True, cache_policy=code_cache_policy(__name__))
def robustness(checkpoint: Checkpoint, images: ImageSet, cfg: RobustnessConfig) -> Tuple[
    Annotated[pd.DataFrame, "robustness_table"],
    Annotated[Image.Image, "robustness_curves"],
]:
    """Score ``checkpoint`` on the ``cfg.subset`` split under each corruption and severity.

    MLflow: ``robustness/clean_auc``, ``robustness/mean_corruption_auc`` (over every
    corruption and severity), ``robustness/<corruption>_auc`` (mean over severities),
    ``robustness/table.csv`` and ``plots/robustness.png``. YAML: ``parameters.robustness``.
    """
    table = robustness_table(checkpoint, images.split(cfg.subset), cfg)
    summary = robustness_summary(table)
    mlflow.log_metrics({f"robustness/{k}": v for k, v in summary.items()})
    mlflow.log_text(table.to_csv(index=False), "robustness/table.csv")
    curves = robustness_curves(table)
    mlflow.log_image(curves, artifact_file="plots/robustness.png")
    logger.info("robustness on %s: clean AUC %.4f, mean corruption AUC %.4f", cfg.subset, summary["clean_auc"],
                summary["mean_corruption_auc"])
    log_metadata({f"robustness/{k}": v for k, v in summary.items()})
    return table, curves
