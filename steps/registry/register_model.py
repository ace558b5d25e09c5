"""register_model step: log the checkpoint as an MLflow pyfunc and register a new version."""

import subprocess
from pathlib import Path
from typing import Annotated, Optional

import mlflow
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.infer.serving import ServedModel, served_labels
from cxr.lifecycle import DEFAULT_MODEL_NAME
from cxr.metrics.operating_points import point_tags
from cxr.models.checkpoint import Checkpoint
from steps.caching import code_cache_policy
from steps.registry.lifecycle import log_served_model

logger = get_logger(__name__)


@step(experiment_tracker=True, cache_policy=code_cache_policy(__name__))
def register_model(checkpoint: Checkpoint, val_metrics: dict, registered_model_name: str = DEFAULT_MODEL_NAME,
                   proxy_metrics: Optional[dict] = None,
                   images: Optional[ImageSet] = None) -> Annotated[int, "model_version"]:
    """Log ``checkpoint`` as a pyfunc model (safetensors + core code, no pickle) and register it.

    The new version is tagged with its val (and proxy) metrics, backbone, labels and the ZenML
    run id; the file digests of ``images``' train split are logged beside it, so later
    promotions leave the images it trained on out of their holdout. An adapted checkpoint is
    tagged with its target set's name, label-free content hash and methods; a calibrated one
    with its calibrator, and every operating point's threshold per label.
    Cached like any step: a re-run with the same checkpoint adds no duplicate version.
    YAML: ``parameters.registered_model_name``.
    """
    meta = checkpoint.meta
    proxy = {f"proxy_{k}": f"{v:.6f}" for k, v in (proxy_metrics or {}).items()}
    adapted = meta.adaptation
    adaptation = {"adapted_to": adapted["target"], "adapted_to_hash": adapted["target_hash"],
                  "adaptation_methods": ",".join(adapted["methods"])} if adapted else {}
    calibration = {"calibration": meta.calibration["method"],
                   "calibration_fit_on": meta.calibration["fit_on"]} if meta.calibration else {}
    return register_served(checkpoint, val_metrics, registered_model_name,
                           {"backbone": meta.model.backbone, "image_size": str(meta.image_size)} | proxy | adaptation
                           | calibration | point_tags(meta.operating_points), images)


def code_version() -> str:
    """The checkout's git commit, with ``-dirty`` when tracked files differ from it ('unknown'
    outside a git checkout, e.g. in a container built from a copy)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def register_served(model: ServedModel, val_metrics: dict, name: str, tags: dict[str, str],
                    images: ImageSet | None = None) -> int:
    """Register ``model`` as a new version of ``name``, tagged with ``tags`` plus its val
    metrics, labels and this ZenML run, with the record of ``images``' train split; returns the version."""
    run = get_step_context().pipeline_run
    tags = tags | {f"val_{k}": f"{v:.6f}" for k, v in val_metrics.items()}
    # logged again by this (uncached) step, since a cached evaluate logs nothing to this run
    mlflow.log_metrics({k: float(v) for k, v in tags.items() if k.startswith(("val_", "proxy_"))})
    tags |= {"zenml_run_id": str(run.id), "zenml_run_name": run.name, "labels": ",".join(served_labels(model)),
             "code_version": code_version()}
    train = [] if images is None else images.split("train").manifest["path"].tolist()
    version = log_served_model(model, name, tags, train)
    logger.info("registered %s version %d (val mean AUC %.4f)", name, version, val_metrics.get("mean_auc", float("nan")))
    log_metadata({"registered_model_name": name, "model_version": version})
    return version
