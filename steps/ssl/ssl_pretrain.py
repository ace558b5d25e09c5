"""ssl_pretrain step: self-supervised pretraining of the backbone on the unlabelled train pool."""

from typing import Annotated, Optional, Tuple

import mlflow
import numpy as np
import pandas as pd
from PIL import Image
from zenml import ArtifactConfig, log_metadata, step
from zenml.enums import ArtifactType
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.metrics.plots import ssl_curves
from cxr.models.checkpoint import BackboneCheckpoint
from cxr.ssl.pretrain import SSLConfig, pretrain, with_target
from steps.caching import code_cache_policy
from steps.resume import resume_store
from steps.tracking import epoch_logger, flatten

logger = get_logger(__name__)


@step(experiment_tracker=True, cache_policy=code_cache_policy(__name__))
def ssl_pretrain(images: ImageSet, backbone: str, cfg: SSLConfig, pairs: Optional[np.ndarray] = None,
                 target: Optional[ImageSet] = None) -> Tuple[
    Annotated[BackboneCheckpoint, ArtifactConfig(name="ssl_backbone", artifact_type=ArtifactType.MODEL)],
    Annotated[pd.DataFrame, "ssl_history"],
    Annotated[Image.Image, "ssl_curves"],
]:
    """Pretrain ``backbone`` with ``cfg.method`` on the 'train' rows, labels unused.

    Positives are nearest-neighbour ``pairs`` (from nn_pairs, indices into the train rows)
    or two views of one image. Loss and embedding std go to MLflow each epoch; a collapse
    is logged as a warning. YAML: ``parameters.ssl``. ``target`` (``adapt.ssl``): a target
    site's images join the pool, unlabelled (domain-adaptive pretraining).

    Resumable like finetune: the state is saved after every epoch (and on SIGINT/SIGTERM) under
    the artifact store's ``resume/ssl_pretrain-<cache key>`` and removed when pretraining returns.
    """
    mlflow.log_params(flatten("ssl", cfg.model_dump()))
    pool = images.split("train").images
    if target is not None:
        pool, pairs = with_target(pool, target.images, pairs)
        mlflow.log_params({"ssl.target_images": len(target), "ssl.pool_images": len(pool)})
    store = resume_store("ssl_pretrain")
    checkpoint, history = pretrain(pool, backbone, cfg, pairs, on_epoch=epoch_logger("ssl_"), resume=store)
    store.clear()
    if history["collapsed"].iloc[-1]:
        logger.warning("SSL representation collapsed (embedding std x sqrt(d) = %.3f)", history["embedding_std"].iloc[-1])
    curves = ssl_curves(history, cfg.collapse_ratio)
    mlflow.log_image(curves, artifact_file="plots/ssl_curves.png")
    log_metadata(checkpoint.meta.model_dump())
    return checkpoint, history, curves
