"""adapt_to_target step: the fine-tuned checkpoint adapted to a target site's unlabelled images."""

from typing import Annotated, Tuple

import mlflow
import pandas as pd
from zenml import ArtifactConfig, log_metadata, step
from zenml.enums import ArtifactType
from zenml.logger import get_logger

from cxr.adapt.target import AdaptConfig, adapt_to_target as adapt
from cxr.data.imageset import ImageSet
from cxr.models.checkpoint import Checkpoint
from cxr.train.config import TrainConfig
from steps.caching import code_cache_policy
from steps.tracking import flatten

logger = get_logger(__name__)


@step(experiment_tracker=True, cache_policy=code_cache_policy(__name__))
def adapt_to_target(checkpoint: Checkpoint, images: ImageSet, target: ImageSet, cfg: AdaptConfig,
                    train: TrainConfig) -> Tuple[
    Annotated[Checkpoint, ArtifactConfig(name="adapted_checkpoint", artifact_type=ArtifactType.MODEL)],
    Annotated[pd.DataFrame, "self_training_log"],
]:
    """Self-train on ``target``'s pseudo-labels (``cfg.self_training``), then re-estimate
    BatchNorm statistics on it (``cfg.batchnorm``); the target's labels are never read.

    Logs the target's label-free content hash and size, and per self-training round the
    threshold, the share of target images and labels used and the round's val/proxy AUC.
    YAML: ``parameters.adapt``.
    """
    mlflow.log_params(flatten("adapt", cfg.model_dump()))

    def log_round(row: dict) -> None:
        mlflow.log_metrics({f"adapt/{k}": float(v) for k, v in row.items() if k != "round"}, step=int(row["round"]))

    adapted, rounds = adapt(checkpoint, images, target, cfg, train, on_round=log_round)
    record = adapted.meta.adaptation
    mlflow.set_tags({"adapted_to": record["target"], "adapted_to_hash": record["target_hash"]})
    mlflow.log_metrics({"adapt/target_images": record["target_images"],
                        "adapt/batchnorm_layers": record["batchnorm_layers"]})
    logger.info("adapted to %r (%d images, hash %s) by %s", record["target"], record["target_images"],
                record["target_hash"][:12], ", ".join(record["methods"]) or "nothing")
    log_metadata({"adaptation": record})
    return adapted, rounds
