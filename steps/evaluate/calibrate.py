"""calibrate step: fit the calibration and operating points into the checkpoint, and report what
its outputs mean on val, proxy and every labelled external set."""

from typing import Annotated, Optional, Tuple

import mlflow
import pandas as pd
from PIL import Image
from zenml import log_metadata, step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.metrics.calibration import CalibrationConfig
from cxr.metrics.generalisation import scored_part
from cxr.metrics.operating_points import OperatingPointConfig
from cxr.metrics.plots import reliability_diagrams
from cxr.metrics.trust import calibrated_checkpoint, pooled_curves, trust_metrics, trust_report
from cxr.models.checkpoint import Checkpoint
from steps.caching import code_cache_policy

logger = get_logger(__name__)


@step(experiment_tracker=True, cache_policy=code_cache_policy(__name__))
def calibrate(checkpoint: Checkpoint, images: ImageSet, val_predictions: pd.DataFrame,
              proxy_predictions: Optional[pd.DataFrame] = None, external_predictions: list[pd.DataFrame] = [],
              external_images: list[ImageSet] = [], external_names: list[str] = [],
              calibration: Optional[CalibrationConfig] = CalibrationConfig(),
              operating_points: OperatingPointConfig = OperatingPointConfig()) -> Tuple[
    Annotated[Checkpoint, "calibrated_checkpoint"],
    Annotated[pd.DataFrame, "calibration_report"],
    Annotated[pd.DataFrame, "operating_points"],
    Annotated[pd.DataFrame, "metric_intervals"],
    Annotated[pd.DataFrame, "subgroups"],
    Annotated[Image.Image, "reliability_diagram"],
]:
    """Fit ``calibration`` (None: scores as trained) and the operating points on the
    ``calibration.fit_on`` split's uncalibrated TTA predictions, store both in the checkpoint, and
    report on each labelled set: ECE / adaptive ECE / MCE / Brier before and after, each operating
    point's sensitivity, specificity, PPV and NPV, headline metrics with patient-level bootstrap
    95% intervals, and the subgroup table (sex, age band, view where the source has them).

    MLflow: ``trust/<set>_<before|after>_<error>``, ``trust/<set>_<metric>[_low|_high]``, the tables under
    ``trust/`` and ``plots/reliability.png``. YAML: ``parameters.calibration`` and
    ``parameters.operating_points``.
    """
    labels = list(checkpoint.meta.label_names)
    sets = {"val": images.split("val")}
    predictions = {"val": val_predictions}
    if proxy_predictions is not None:
        sets["proxy"], predictions["proxy"] = images.split("proxy"), proxy_predictions
    for name, part, frame in zip(external_names, external_images, external_predictions):
        if part.is_labelled:
            sets[f"external_{name}"], predictions[f"external_{name}"] = part, frame
    scored = {name: (part, scored_part(part, predictions[name], labels, name)) for name, part in sets.items()}
    fit_on = calibration.fit_on if calibration else "val"
    if fit_on not in scored:
        raise ValueError(f"calibration.fit_on is {fit_on!r} but the run has no such split: set split.proxy")
    calibrated = calibrated_checkpoint(checkpoint, *scored[fit_on], calibration, operating_points, fit_on)
    report = trust_report(calibrated, scored, operating_points)
    metrics = trust_metrics(report)
    mlflow.log_metrics(metrics)
    for key in ("calibration", "operating_points", "intervals", "subgroups"):
        mlflow.log_text(getattr(report, key).to_csv(index=False), f"trust/{key}.csv")
    diagram = reliability_diagrams(pooled_curves(calibrated, scored))
    mlflow.log_image(diagram, artifact_file="plots/reliability.png")
    if report.warnings:
        logger.warning("%d subgroup rows are too small to judge (under 10 positives or negatives; flagged in "
                       "trust/subgroups.csv), e.g.\n  %s", len(report.warnings), "\n  ".join(report.warnings[:3]))
    means = report.calibration[report.calibration["label"] == "mean"]
    logger.info("calibration (%s fitted on %s):\n%s", calibration.method if calibration else "none", fit_on,
                means.round(4).to_string(index=False))
    log_metadata(metrics)
    return calibrated, report.calibration, report.operating_points, report.intervals, report.subgroups, diagram
