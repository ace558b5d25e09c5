"""promote_model step: champion/challenger decision against the registry's current champion."""

from typing import Annotated

import mlflow
from mlflow import MlflowClient
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.lifecycle.promotion import PromotionConfig
from steps.registry.lifecycle import CHAMPION, promote

logger = get_logger(__name__)


@step(experiment_tracker=True, enable_cache=False)
def promote_model(model_version: int, images: ImageSet, registered_model_name: str,
                  cfg: PromotionConfig) -> Annotated[dict, "promotion"]:
    """Score the new version and the ``champion`` alias on the same val images (as served) and
    decide with a paired bootstrap: ``champion`` only when better by ``cfg.margin`` with
    ``cfg.confidence``, else ``challenger``. The ZenML model version (when the pipeline has
    one) gets stage ``production`` or ``staging`` to match. A failure before the alias move
    leaves the previous champion in place. YAML: ``parameters.promotion``.
    """
    alias, decision, before = promote(MlflowClient(), registered_model_name, model_version, images.split("val"), cfg)
    evidence = decision.as_dict() if decision is not None else {"promote": True, "reason": "already champion"}
    logger.info("%s version %d -> %s (%s)", registered_model_name, model_version, alias, evidence["reason"])
    mirror_stage(alias == CHAMPION)
    mlflow.log_metrics({f"promotion_{k}": float(v) for k, v in evidence.items() if k != "reason"})
    log_metadata({"alias": alias, **evidence})
    return {"alias": alias, "champion_before": before, **evidence}


def mirror_stage(promoted: bool) -> None:
    """Set the ZenML Model Control Plane stage of this run's model version, when it has one."""
    context = get_step_context()
    if context.model_version is None:
        logger.info("no ZenML model configured for this pipeline: Model Control Plane stage not set")
        return
    context.model.set_stage("production" if promoted else "staging", force=True)
