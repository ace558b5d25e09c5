"""evaluate step: validation metrics, tuned thresholds and plots, logged to MLflow."""

from typing import Annotated, Tuple

import mlflow
import pandas as pd
from PIL import Image
from zenml import log_metadata, step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.metrics.classification import label_report, summary_metrics
from cxr.metrics.plots import confusion_matrices, roc_curves, training_curves
from steps.caching import code_cache_policy

logger = get_logger(__name__)


@step(experiment_tracker=True, cache_policy=code_cache_policy(__name__))
def evaluate(val_predictions: pd.DataFrame, images: ImageSet, history: pd.DataFrame,
             threshold_min: float = 0.01, threshold_max: float = 0.99) -> Tuple[
    Annotated[dict, "val_metrics"],
    Annotated[pd.DataFrame, "val_report"],
    Annotated[Image.Image, "roc_curve"],
    Annotated[Image.Image, "training_curves"],
    Annotated[Image.Image, "confusion_matrix"],
]:
    """Score the val predictions: per-label and mean ROC AUC, AP, F1 and Cohen's kappa at a
    threshold tuned for F1 on val (searched in [threshold_min, threshold_max]), confusion
    counts, and ROC / training-curve / confusion-matrix plots.

    Everything goes to MLflow (metrics ``val_*``, plots under ``plots/``, the table as
    ``val_report.csv``); the plots are also this step's artifact visualizations.
    """
    val = images.split("val")
    if list(val_predictions["id"]) != val.ids:
        raise ValueError("val_predictions rows do not match the val split of images")
    probs = val_predictions[list(val.label_names)].to_numpy()
    report = label_report(val.labels, probs, list(val.label_names), val.mask,
                          search_range=(threshold_min, threshold_max))
    metrics = summary_metrics(report)
    plots = {"roc_curve": roc_curves(val.labels, probs, list(val.label_names), val.mask),
             "training_curves": training_curves(history),
             "confusion_matrix": confusion_matrices(report)}
    mlflow.log_metrics({f"val_{k}": v for k, v in metrics.items()})
    for name, image in plots.items():
        mlflow.log_image(image, artifact_file=f"plots/{name}.png")
    mlflow.log_text(report.to_csv(index=False), "val_report.csv")
    logger.info("validation (TTA):\n%s", report.round(4).to_string(index=False))
    log_metadata(metrics)
    return metrics, report, plots["roc_curve"], plots["training_curves"], plots["confusion_matrix"]
