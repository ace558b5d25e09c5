"""register_ensemble step: log the kept members and their weights as one pyfunc version."""

from typing import Annotated, List

import numpy as np
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from cxr.infer.ensemble import EnsembleModel
from cxr.models.checkpoint import Checkpoint
from steps.caching import core_cache_policy
from steps.registry.lifecycle import log_served_model

logger = get_logger(__name__)


@step(experiment_tracker=True, cache_policy=core_cache_policy("cxr.infer.serving"))
def register_ensemble(names: List[str], checkpoints: List[Checkpoint], ensemble_weights: dict, val_metrics: dict,
                      registered_model_name: str) -> Annotated[int, "model_version"]:
    """Register the ensemble (kept members' checkpoints + weights) as a new version of
    ``registered_model_name``, so it is served, promoted and rolled back like a single model.
    Tags: val metrics, members, weighting and the ZenML run.
    """
    by_name = dict(zip(names, checkpoints))
    kept = ensemble_weights["members"]
    model = EnsembleModel({m: by_name[m] for m in kept}, np.asarray(ensemble_weights["weights"]),
                          ensemble_weights["weighting"])
    run = get_step_context().pipeline_run
    tags = {f"val_{k}": f"{v:.6f}" for k, v in val_metrics.items()}
    tags |= {"zenml_run_id": str(run.id), "zenml_run_name": run.name, "ensemble_members": ",".join(kept),
             "backbone": "+".join(by_name[m].meta.model.backbone for m in kept),
             "weighting": model.weighting, "labels": ",".join(model.label_names)}
    version = log_served_model(model, registered_model_name, tags)
    logger.info("registered ensemble of %s as %s version %d", kept, registered_model_name, version)
    log_metadata({"registered_model_name": registered_model_name, "model_version": version, "members": kept})
    return version
