"""finetune step: supervised training of a timm backbone + head on the train split."""

from typing import Annotated, Optional, Tuple

import mlflow
import pandas as pd
from zenml import ArtifactConfig, get_step_context, log_metadata, step
from zenml.enums import ArtifactType
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.models.checkpoint import BackboneCheckpoint, Checkpoint
from cxr.models.classifier import ModelConfig
from cxr.train.config import TrainConfig
from cxr.train.cluster import fit_multi_node
from cxr.train.distributed import fit_data_parallel
from cxr.train.loop import fit
from steps.caching import code_cache_policy
from steps.resume import resume_store
from steps.tracking import epoch_logger, flatten

logger = get_logger(__name__)


def with_cluster_image(train: TrainConfig) -> TrainConfig:
    """A multi-node ``train`` whose cluster image, when unset, is the one this step runs in."""
    if train.nodes == 1 or train.cluster.image:
        return train
    context = get_step_context()
    if context.pipeline_run.build is None:
        return train
    image = context.pipeline_run.build.get_image(component_key="orchestrator", step=context.step_run.name)
    return train.model_copy(update={"cluster": train.cluster.model_copy(update={"image": image})})


@step(experiment_tracker=True, cache_policy=code_cache_policy(__name__))
def finetune(images: ImageSet, model: ModelConfig, train: TrainConfig, preprocess: dict,
             ssl_backbone: Optional[BackboneCheckpoint] = None) -> Tuple[
    Annotated[Checkpoint, ArtifactConfig(name="checkpoint", artifact_type=ArtifactType.MODEL)],
    Annotated[pd.DataFrame, "history"],
]:
    """Train on the 'train' rows, validate on 'val' (and 'proxy', when the split holds one)
    each epoch, return the best epoch by ``train.select_on``.

    YAML: ``parameters.model`` (architecture) and ``parameters.train`` (optimisation).
    Logs the configs as MLflow params and each epoch's losses, val AUC, lr and speed as
    MLflow metrics. ``ssl_backbone`` (from ssl_pretrain) initialises the backbone; with
    ``model.freeze_backbone`` only the head trains on it. ``train.processes > 1`` trains
    data-parallel (one process per GPU; the step's ResourceSettings should ask for as many);
    ``train.nodes > 1`` trains over that many pods as a Kubeflow PyTorchJob (``train.cluster``),
    this step's pod only waiting for it.
    ``preprocess`` is the preprocessing settings as plain data, stored in the checkpoint so
    serving decodes alike; as data, not the config class, so that editing preprocessing code
    does not re-run training on bit-identical images.

    Resumable: the loop saves its state after every epoch (and on SIGINT/SIGTERM) under the
    artifact store's ``resume/finetune-<cache key>``; a re-run with the same inputs goes on from
    there and ends as the uninterrupted run would. The state is removed when training returns.
    """
    mlflow.log_params(flatten("model", model.model_dump()) | flatten("train", train.model_dump()))
    train = with_cluster_image(train)
    run_fit = fit_multi_node if train.nodes > 1 else fit if train.processes == 1 else fit_data_parallel
    proxy = images.split("proxy")
    store = resume_store("finetune")
    result = run_fit(images.split("train"), images.split("val"), model, train, preprocess=preprocess,
                     on_epoch=epoch_logger(), backbone_init=ssl_backbone, proxy=proxy if len(proxy) else None,
                     resume=store)
    store.clear()
    meta = result.checkpoint.meta
    logger.info("best epoch %d of %d by %s AUC: %s", meta.epoch, len(result.history), train.select_on,
                ", ".join(f"{k} {v:.4f}" for k, v in meta.val_metrics.items() if k.endswith("_auc")))
    log_metadata({"best_epoch": meta.epoch, **meta.val_metrics,
                  "train_images_per_s": float(result.history["train_images_per_s"].mean())})
    return result.checkpoint, result.history
