"""promote_model step: champion/challenger decision against the registry's current champion."""

from typing import Annotated, Optional

import mlflow
from mlflow import MlflowClient
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.lifecycle.promotion import PromotionConfig, holdout_set
from steps.registry.lifecycle import CHAMPION, promote

logger = get_logger(__name__)


@step(experiment_tracker=True, enable_cache=False)
def promote_model(model_version: int, images: ImageSet, registered_model_name: str, cfg: PromotionConfig,
                  holdout_images: Optional[ImageSet] = None) -> Annotated[dict, "promotion"]:
    """Score the new version and the ``champion`` alias on the same holdout images (as served)
    and decide with a paired bootstrap: ``champion`` only when better by ``cfg.margin`` with
    ``cfg.confidence``, else ``challenger``. The holdout is the ``cfg.holdout`` split of
    ``images`` (val or proxy) or, for an external set's name, ``holdout_images``; it is
    refused if it shares an image with the train split. The version's tags record the
    holdout's name and content hash. The ZenML model version (when the pipeline has one)
    gets stage ``production`` or ``staging`` to match. A failure before the alias move leaves
    the previous champion in place. YAML: ``parameters.promotion``.

    Raises:
        DataError: the holdout overlaps the train split by id or pixel content, or is empty.
    """
    holdout = holdout_set(images, cfg, holdout_images)
    alias, decision, before = promote(MlflowClient(), registered_model_name, model_version, holdout, cfg,
                                      cfg.holdout)
    evidence = decision.as_dict() if decision is not None else {"promote": True, "reason": "already champion"}
    logger.info("%s version %d -> %s on holdout %r (%s)", registered_model_name, model_version, alias,
                cfg.holdout, evidence["reason"])
    mirror_stage(alias == CHAMPION)
    mlflow.log_metrics({f"promotion_{k}": float(v) for k, v in evidence.items() if k != "reason"})
    log_metadata({"alias": alias, "holdout": cfg.holdout, **evidence})
    return {"alias": alias, "champion_before": before, "holdout": cfg.holdout, **evidence}


def mirror_stage(promoted: bool) -> None:
    """Set the ZenML Model Control Plane stage of this run's model version, when it has one."""
    context = get_step_context()
    if context.model_version is None:
        logger.info("no ZenML model configured for this pipeline: Model Control Plane stage not set")
        return
    context.model.set_stage("production" if promoted else "staging", force=True)
