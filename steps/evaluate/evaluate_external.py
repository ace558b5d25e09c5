"""evaluate_external step: one named external set scored like val, at the thresholds val's report applied."""

from typing import Annotated, Tuple

import mlflow
import pandas as pd
from zenml import log_metadata, step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.metrics.generalisation import part_labels, part_report, scored_part
from cxr.metrics.plots import confusion_matrices, roc_curves
from steps.caching import code_cache_policy

logger = get_logger(__name__)


@step(experiment_tracker=True, cache_policy=code_cache_policy(__name__))
def evaluate_external(predictions: pd.DataFrame, images: ImageSet, name: str, val_report: pd.DataFrame) -> Tuple[
    Annotated[dict, "external_metrics"],
    Annotated[pd.DataFrame, "external_report"],
]:
    """Score a labelled external set with the thresholds the val report applied: metrics
    ``external/<name>/*``, ``external/<name>/report.csv`` and ROC / confusion plots in MLflow.

    An unlabelled set (e.g. a new site's images kept for adaptation) returns no metrics and
    an empty table. YAML: ``parameters.external``.
    """
    if not images.is_labelled:
        logger.info("external set %r has no labels: %d images predicted, no metrics", name, len(images))
        return {}, pd.DataFrame()
    labels = list(val_report["label"])
    probs = scored_part(images, predictions, labels, f"external {name!r}")
    report, metrics = part_report(images, probs, labels, val_report["threshold"].to_numpy())
    prefix = f"external/{name}"
    mlflow.log_metrics({f"{prefix}/{k}": v for k, v in metrics.items()})
    mlflow.log_text(report.to_csv(index=False), f"{prefix}/report.csv")
    y, mask = part_labels(images, labels)
    mlflow.log_image(roc_curves(y, probs, labels, mask, title=name),
                     artifact_file=f"{prefix}/roc_curve.png")
    mlflow.log_image(confusion_matrices(report), artifact_file=f"{prefix}/confusion_matrix.png")
    logger.info("external %s (TTA, thresholds of the val report):\n%s", name, report.round(4).to_string(index=False))
    log_metadata({f"{prefix}/{k}": v for k, v in metrics.items()})
    return metrics, report
