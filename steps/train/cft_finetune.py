"""cft_finetune step: Category-wise Fine-Tuning of the last layer by a genetic algorithm."""

from typing import Annotated, Tuple

import mlflow
import numpy as np
import pandas as pd
from zenml import ArtifactConfig, log_metadata, step
from zenml.enums import ArtifactType
from zenml.logger import get_logger

from cxr.cft.genetic import CFTConfig, category_finetune
from cxr.cft.head import last_layer, with_last_layer
from cxr.data.imageset import ImageSet
from cxr.models.checkpoint import Checkpoint
from steps.caching import code_cache_policy
from steps.tracking import flatten

logger = get_logger(__name__)


@step(experiment_tracker=True, cache_policy=code_cache_policy(__name__))
def cft_finetune(checkpoint: Checkpoint, images: ImageSet, train_features: np.ndarray, val_features: np.ndarray,
        cfg: CFTConfig) -> Tuple[
    Annotated[Checkpoint, ArtifactConfig(name="cft_checkpoint", artifact_type=ArtifactType.MODEL)],
    Annotated[pd.DataFrame, "cft_report"],
]:
    """Evolve each category's (weights, bias) on its known train labels (Ignore mode) and
    keep the val-best candidate, never worse than the trained layer on val.

    Logs the GA config, the per-category before/after table (``cft_report.csv``) and the
    mean val AUC before/after to MLflow. YAML: ``parameters.cft``.
    """
    train, val = images.split("train"), images.split("val")
    weight, bias = last_layer(checkpoint)
    new_weight, new_bias, report = category_finetune(
        train_features, train.labels, train.mask, val_features, val.labels, val.mask, weight, bias,
        list(checkpoint.meta.label_names), cfg)
    done = report[report["skipped"] == ""]
    summary = {"cft_val_auc_before": float(done["val_auc_before"].mean()),
               "cft_val_auc_after": float(done["val_auc_after"].mean()),
               "cft_categories_changed": int((done["val_fitness_after"] > done["val_fitness_before"]).sum())}
    mlflow.log_params(flatten("cft", cfg.model_dump()))
    mlflow.log_metrics(summary)
    mlflow.log_text(report.to_csv(index=False), "cft_report.csv")
    logger.info("CFT per category:\n%s", report.round(4).to_string(index=False))
    log_metadata(summary)
    metrics = {**checkpoint.meta.val_metrics, "val_auc_single_view_cft": summary["cft_val_auc_after"]}
    return with_last_layer(checkpoint, new_weight, new_bias, metrics), report
