"""register_model step: log the checkpoint as an MLflow pyfunc and register a new version."""

import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import mlflow
from mlflow import MlflowClient
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from cxr.models.checkpoint import Checkpoint, save_checkpoint
from steps.caching import core_cache_policy

logger = get_logger(__name__)

PYFUNC_FILE = Path(__file__).with_name("cxr_pyfunc.py")
CORE_DIR = Path(__file__).resolve().parents[2] / "cxr"
SERVING_PACKAGES = ("torch", "torchvision", "timm", "safetensors", "numpy", "pandas", "pydantic",
                    "opencv-python-headless", "scikit-learn", "matplotlib", "pillow", "tqdm")


@step(experiment_tracker=True, cache_policy=core_cache_policy("cxr.infer.serving"))
def register_model(checkpoint: Checkpoint, val_metrics: dict,
                   registered_model_name: str = "cxr-classifier") -> Annotated[int, "model_version"]:
    """Log ``checkpoint`` as a pyfunc model (safetensors + core code, no pickle) and register it.

    The new version is tagged with its val metrics, backbone, labels and the ZenML run id.
    Cached like any step: a re-run with the same checkpoint adds no duplicate version.
    YAML: ``parameters.registered_model_name``.
    """
    run = get_step_context().pipeline_run
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(checkpoint, tmp)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_FILE), artifacts={"checkpoint": tmp},
            code_paths=[str(CORE_DIR)], registered_model_name=registered_model_name,
            pip_requirements=[f"{p}=={version(p)}" for p in SERVING_PACKAGES])
    model_version = int(info.registered_model_version)
    tags = {f"val_{k}": f"{v:.6f}" for k, v in val_metrics.items()}
    tags |= {"zenml_run_id": str(run.id), "zenml_run_name": run.name, "backbone": checkpoint.meta.model.backbone,
             "labels": ",".join(checkpoint.meta.label_names), "image_size": str(checkpoint.meta.image_size)}
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_model_name, str(model_version), key, value)
    logger.info("registered %s version %d (val mean AUC %.4f)", registered_model_name, model_version,
                val_metrics.get("mean_auc", float("nan")))
    log_metadata({"registered_model_name": registered_model_name, "model_version": model_version})
    return model_version
