"""ssl_probe step: linear-probe and kNN val AUC of the frozen SSL backbone."""

from typing import Annotated

import mlflow
from zenml import log_metadata, step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.models.checkpoint import BackboneCheckpoint
from cxr.ssl.probe import probe
from steps.caching import code_cache_policy

logger = get_logger(__name__)


@step(experiment_tracker=True, cache_policy=code_cache_policy(__name__))
def ssl_probe(ssl_backbone: BackboneCheckpoint, images: ImageSet, k: int = 20) -> Annotated[dict, "ssl_probe_metrics"]:
    """Score the frozen backbone on the labelled split: logistic regression and k-NN on its
    pooled features, fitted on 'train' and scored on 'val' (mean ROC AUC). Fast enough to
    compare SSL settings before any fine-tune."""
    metrics = probe(ssl_backbone, images.split("train"), images.split("val"), k=k)
    mlflow.log_metrics({f"ssl_{key}": value for key, value in metrics.items()})
    logger.info("SSL probe: linear %.4f, kNN %.4f", metrics["linear_probe_auc"], metrics["knn_auc"])
    log_metadata(metrics)
    return metrics
