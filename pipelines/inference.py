"""Inference pipeline: ingest new images -> batch_predict with a registered model -> CSV."""

from typing import Optional

from zenml import pipeline

import materializers  # noqa: F401  (registers the ImageSet materializer)
from cxr.data.ingest import IngestConfig
from cxr.infer.tta import SINGLE_VIEW, ViewName
from cxr.lifecycle import DEFAULT_MODEL_NAME
from steps.data import ingest
from steps.infer import batch_predict


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
    """
    images = ingest(source=data)
    uri = f"models:/{registered_model_name}/{version}" if version is not None \
        else f"models:/{registered_model_name}@{alias}"
    batch_predict(images=images, model_uri=uri, output_path=output_path, sample_submission=sample_submission,
                  views=views, chunk_size=chunk_size, guardrails=guardrails, operating_point=operating_point)
