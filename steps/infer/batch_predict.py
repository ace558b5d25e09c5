"""batch_predict step: stream a folder or table of new images through a registered model."""

from pathlib import Path
from typing import Annotated, Optional

import mlflow
import pandas as pd
from zenml import log_metadata, step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.data.ingest import resolve_path
from cxr.infer.batch import predict_chunks, write_predictions
from cxr.infer.serving import served_labels
from cxr.infer.submission import make_submission, write_submission
from cxr.infer.tta import SINGLE_VIEW
from steps.registry.lifecycle import served_model

logger = get_logger(__name__)


def guardrail_counts(predictions: pd.DataFrame) -> dict[str, int]:
    """How many rows were flagged, in all and per reason."""
    reasons = predictions["flag_reason"].astype(str).str.split(";").explode()
    return {"flagged": int(predictions["flag"].astype(str).str.lower().eq("true").sum()),
            **{k: int(v) for k, v in reasons[reasons != ""].value_counts().items()}}


@step(experiment_tracker=True, enable_cache=False)
def batch_predict(images: ImageSet, model_uri: str, output_path: str, sample_submission: Optional[str] = None,
                  views: list[str] = list(SINGLE_VIEW), chunk_size: int = 1024,
                  batch_size: int = 64, guardrails: bool = True, operating_point: Optional[str] = None,
                  drift: Optional[pd.DataFrame] = None) -> Annotated[dict, "inference_summary"]:
    """Predict every file of ``images`` with the registered model at ``model_uri`` (an alias
    such as ``models:/cxr-pneumonia@champion`` or a version ``models:/cxr-pneumonia/3``),
    ``chunk_size`` files at a time, appending rows to ``output_path``; then reorder to
    ``sample_submission`` when given (which drops the guardrails' ``flag``/``flag_reason``
    columns; their counts are logged). At ``operating_point`` (a point the model carries: f1,
    sensitivity, specificity) each label gains ``<label>_positive``, whose counts are logged.
    ``drift`` is the batch's drift report (``check_drift``, which runs first); the summary
    lists the tests that tripped.
    YAML: ``parameters.*`` of the inference pipeline.
    The experiment tracker points MLflow at the stack's registry and records the run.
    """
    model = served_model(model_uri)
    output = resolve_path(output_path)
    rows = write_predictions(predict_chunks(model, images, tuple(views), chunk_size, batch_size,
                                            guardrails=guardrails, operating_point=operating_point), output)
    written = pd.read_csv(output, dtype={"id": str}, keep_default_na=False)
    flagged = guardrail_counts(written) if guardrails else {}
    positives = {c: int(written[c].astype(str).str.lower().eq("true").sum()) for c in written.columns
                 if operating_point and c.endswith("_positive")}
    if sample_submission:
        write_submission(make_submission(pd.read_csv(output, dtype={"id": str}),
                                          str(resolve_path(sample_submission))), output)
    logger.info("wrote %d predictions from %s to %s", rows, model_uri, Path(output).resolve())
    summary = {"model_uri": model_uri, "rows": rows, "path": str(Path(output).resolve()),
               "labels": served_labels(model), "views": list(views), "guardrails": flagged,
               "operating_point": operating_point or "", "positives": positives,
               "drifted": [] if drift is None else drift.loc[drift["drifted"], "test"].tolist()}
    log_metadata(summary)
    mlflow.log_params({"model_uri": model_uri, "views": ",".join(views), "rows": rows})
    if flagged:
        logger.info("guardrails flagged %d of %d images: %s", flagged["flagged"], rows,
                    ", ".join(f"{k} {v}" for k, v in flagged.items() if k != "flagged" and v) or "none")
        mlflow.log_metrics({f"guardrails/{k}": v for k, v in flagged.items()})
    if positives:
        logger.info("at operating point %s: %s", operating_point, ", ".join(f"{k} {v}" for k, v in positives.items()))
        mlflow.log_metrics({f"positives/{k}": v for k, v in positives.items()})
    return summary
