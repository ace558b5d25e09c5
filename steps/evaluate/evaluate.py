"""evaluate step: val (and proxy) metrics at thresholds fitted on one split, and plots, logged to MLflow."""

from typing import Annotated, Optional, Tuple

import mlflow
import pandas as pd
from PIL import Image
from zenml import log_metadata, step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.metrics.generalisation import ThresholdConfig, fitted_thresholds, part_report, scored_part
from cxr.metrics.plots import confusion_matrices, roc_curves, training_curves
from steps.caching import code_cache_policy

logger = get_logger(__name__)


@step(experiment_tracker=True, cache_policy=code_cache_policy(__name__))
def evaluate(val_predictions: pd.DataFrame, images: ImageSet, history: pd.DataFrame,
             proxy_predictions: Optional[pd.DataFrame] = None,
             thresholds: ThresholdConfig = ThresholdConfig(), select_on: str = "val") -> Tuple[
    Annotated[dict, "val_metrics"],
    Annotated[pd.DataFrame, "val_report"],
    Annotated[dict, "proxy_metrics"],
    Annotated[pd.DataFrame, "proxy_report"],
    Annotated[Image.Image, "roc_curve"],
    Annotated[Image.Image, "training_curves"],
    Annotated[Image.Image, "confusion_matrix"],
]:
    """Score the val (and, when given, proxy) predictions: per-label and mean ROC AUC, AP, F1
    and Cohen's kappa at per-label F1 thresholds tuned on the ``thresholds.fit_on`` split,
    confusion counts, and ROC / training-curve / confusion-matrix plots.

    Everything goes to MLflow (metrics ``val_*`` and ``proxy_*``, plots under ``plots/``, the
    tables as ``val_report.csv`` and ``proxy_report.csv``); the plots are also this step's
    artifact visualizations. YAML: ``parameters.thresholds``.
    """
    labels = list(images.label_names)
    parts = {"val": images.split("val")}
    probs = {"val": scored_part(parts["val"], val_predictions, labels, "val")}
    if proxy_predictions is not None:
        parts["proxy"] = images.split("proxy")
        probs["proxy"] = scored_part(parts["proxy"], proxy_predictions, labels, "proxy")
    if thresholds.fit_on not in parts:
        raise ValueError(f"thresholds.fit_on is {thresholds.fit_on!r} but the run has no such split: set split.proxy")
    cut = fitted_thresholds(parts[thresholds.fit_on], probs[thresholds.fit_on], labels, thresholds)
    scored = {name: part_report(part, probs[name], labels, cut) for name, part in parts.items()}
    for name, (report, metrics) in scored.items():
        mlflow.log_metrics({f"{name}_{k}": v for k, v in metrics.items()})
        mlflow.log_text(report.to_csv(index=False), f"{name}_report.csv")
        logger.info("%s (TTA, thresholds fitted on %s):\n%s", name, thresholds.fit_on,
                    report.round(4).to_string(index=False))
    val = parts["val"]
    plots = {"roc_curve": roc_curves(val.labels, probs["val"], labels, val.mask),
             "training_curves": training_curves(history, select_on),
             "confusion_matrix": confusion_matrices(scored["val"][0])}
    for name, image in plots.items():
        mlflow.log_image(image, artifact_file=f"plots/{name}.png")
    val_report, val_metrics = scored["val"]
    proxy_report, proxy_metrics = scored.get("proxy", (pd.DataFrame(), {}))
    log_metadata(val_metrics | {f"proxy_{k}": v for k, v in proxy_metrics.items()})
    return (val_metrics, val_report, proxy_metrics, proxy_report,
            plots["roc_curve"], plots["training_curves"], plots["confusion_matrix"])
