"""register_model step: log the checkpoint as an MLflow pyfunc and register a new version."""

from typing import Annotated

from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from cxr.models.checkpoint import Checkpoint
from steps.caching import core_cache_policy
from steps.registry.lifecycle import log_served_model

logger = get_logger(__name__)


@step(experiment_tracker=True, cache_policy=core_cache_policy("cxr.infer.serving"))
def register_model(checkpoint: Checkpoint, val_metrics: dict,
                   registered_model_name: str = "cxr-classifier") -> Annotated[int, "model_version"]:
    """Log ``checkpoint`` as a pyfunc model (safetensors + core code, no pickle) and register it.

    The new version is tagged with its val metrics, backbone, labels and the ZenML run id.
    Cached like any step: a re-run with the same checkpoint adds no duplicate version.
    YAML: ``parameters.registered_model_name``.
    """
    run = get_step_context().pipeline_run
    tags = {f"val_{k}": f"{v:.6f}" for k, v in val_metrics.items()}
    tags |= {"zenml_run_id": str(run.id), "zenml_run_name": run.name, "backbone": checkpoint.meta.model.backbone,
             "labels": ",".join(checkpoint.meta.label_names), "image_size": str(checkpoint.meta.image_size)}
    model_version = log_served_model(checkpoint, registered_model_name, tags)
    logger.info("registered %s version %d (val mean AUC %.4f)", registered_model_name, model_version,
                val_metrics.get("mean_auc", float("nan")))
    log_metadata({"registered_model_name": registered_model_name, "model_version": model_version})
    return model_version
