"""Inference pipeline: ingest new images -> check_drift against the registered model's val
reference -> batch_predict with that model -> CSV."""

from typing import Optional

from zenml import pipeline

import materializers  # noqa: F401  (registers the ImageSet materializer)
from cxr.data.ingest import IngestConfig
from cxr.infer.tta import SINGLE_VIEW, ViewName
from cxr.lifecycle import DEFAULT_MODEL_NAME
from cxr.metrics.drift import DriftConfig
from steps.data import ingest
from steps.infer import batch_predict, check_drift


@pipeline
def inference_pipeline(
    data: IngestConfig,
    registered_model_name: str = DEFAULT_MODEL_NAME,
    alias: str = "champion",
    version: Optional[int] = None,
    output_path: str = "outputs/predictions.csv",
    sample_submission: Optional[str] = None,
    views: list[ViewName] = list(SINGLE_VIEW),
    chunk_size: int = 1024,
    guardrails: bool = True,
    operating_point: Optional[str] = None,
    drift: Optional[DriftConfig] = DriftConfig(),
) -> None:
    """Predict a folder or table of new images with the registry's ``alias`` (or ``version``).

    Args:
        data: the new images (``source: images`` for a flat folder, or ``csv``).
        registered_model_name: MLflow registered model to load.
        alias: registry alias to load (``champion`` by default); ignored when ``version`` is set.
        version: a fixed registered version instead of the alias.
        output_path: predictions CSV (``id`` + one column per label).
        sample_submission: optional CSV whose row order and columns the output follows.
        views: TTA views (``original`` only is single-pass).
        chunk_size: files decoded and predicted at a time; bounds memory.
        guardrails: add the registered model's input guardrails' ``flag`` and ``flag_reason``
            columns (and NaN scores for flagged images when its guardrails reject).
        operating_point: one of the registered model's operating points (f1, sensitivity,
            specificity): each label gains ``<label>_positive`` at its threshold.
        drift: the batch drift check that runs before any prediction (``action: fail`` stops a
            drifted batch there; None: no check).
    """
    images = ingest(source=data)
    uri = f"models:/{registered_model_name}/{version}" if version is not None \
        else f"models:/{registered_model_name}@{alias}"
    report = None if drift is None else check_drift(images=images, model_uri=uri, cfg=drift)
    batch_predict(images=images, model_uri=uri, output_path=output_path, sample_submission=sample_submission,
                  views=views, chunk_size=chunk_size, guardrails=guardrails, operating_point=operating_point,
                  drift=report)
