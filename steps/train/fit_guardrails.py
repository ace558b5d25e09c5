"""fit_guardrails step: the final checkpoint with its input guardrails fitted on train and val,
and the val reference that batch drift checks compare new batches with."""

from typing import Annotated, Optional

import mlflow
from zenml import ArtifactConfig, log_metadata, step
from zenml.enums import ArtifactType
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.infer.guardrails import GuardrailConfig, fit_guardrails as fit, guard
from cxr.metrics.drift import DriftConfig, drift_report, fit_drift
from cxr.runtime import seeded_sample
from cxr.models.checkpoint import Checkpoint
from steps.caching import code_cache_policy
from steps.tracking import flatten

logger = get_logger(__name__)


@step(experiment_tracker=True, cache_policy=code_cache_policy(__name__))
def fit_guardrails(checkpoint: Checkpoint, images: ImageSet, cfg: GuardrailConfig,
                   drift: Optional[DriftConfig] = None) -> Annotated[
        Checkpoint, ArtifactConfig(name="guarded_checkpoint", artifact_type=ArtifactType.MODEL)]:
    """Fit the polarity model and the penultimate-feature Gaussian on the train split, set the
    distance threshold at ``cfg.ood_percentile`` of val, and store them in the checkpoint, whose
    model weights are unchanged. Logs the threshold and the share of val flagged per check.
    With ``drift``, also store val's drift reference (``cxr.metrics.drift``) and log a sample of
    train tested against it as ``drift/train_<test>_p_value``.
    YAML: ``parameters.guardrails``, ``parameters.drift``.
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
    if drift is None:
        return guarded
    guarded = fit_drift(guarded, images.split("val").images, drift)
    train = drift_report(guarded, seeded_sample(images.split("train").images, drift.max_images, drift.seed + 1), drift)
    mlflow.log_metrics({f"drift/train_{r.test}_p_value": float(r.p_value) for r in train.itertuples()})
    logger.info("drift reference: %d val images; train against it: %s", min(len(images.split("val")),
                drift.max_images), ", ".join(f"{r.test} p={r.p_value:.3g}" for r in train.itertuples()))
    return guarded
