"""fit_guardrails step: the final checkpoint with its input guardrails fitted on train and val."""

from typing import Annotated

import mlflow
from zenml import ArtifactConfig, log_metadata, step
from zenml.enums import ArtifactType
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.infer.guardrails import GuardrailConfig, fit_guardrails as fit, guard
from cxr.models.checkpoint import Checkpoint
from steps.caching import code_cache_policy
from steps.tracking import flatten

logger = get_logger(__name__)


@step(experiment_tracker=True, cache_policy=code_cache_policy(__name__))
def fit_guardrails(checkpoint: Checkpoint, images: ImageSet, cfg: GuardrailConfig) -> Annotated[
        Checkpoint, ArtifactConfig(name="guarded_checkpoint", artifact_type=ArtifactType.MODEL)]:
    """Fit the polarity model and the penultimate-feature Gaussian on the train split, set the
    distance threshold at ``cfg.ood_percentile`` of val, and store them in the checkpoint, whose
    model weights are unchanged. Logs the threshold and the share of val flagged per check.
    YAML: ``parameters.guardrails``.
    """
    mlflow.log_params(flatten("guardrails", cfg.model_dump()))
    guarded = fit(checkpoint, images.split("train").images, images.split("val").images, cfg)
    flags = guard(guarded, images.split("val"), cfg)
    reasons = flags["flag_reason"].str.split(";")
    shares = {f"guardrails/val_{name}": float(reasons.apply(lambda r, n=name: n in r).mean()) for name in cfg.checks}
    threshold = float(guarded.state_dict["guardrails.ood_threshold"][0])
    mlflow.log_metrics({"guardrails/val_flagged": float(flags["flag"].mean()), "guardrails/ood_threshold": threshold,
                        **shares})
    logger.info("guardrails fitted: %.1f%% of val flagged (%s)", 100 * flags["flag"].mean(),
                ", ".join(f"{k.split('_', 1)[1]} {100 * v:.1f}%" for k, v in shares.items() if v))
    log_metadata({"guardrails": {"val_flagged": float(flags["flag"].mean()), "ood_threshold": threshold}})
    return guarded
