"""check_drift step: compare a new batch with the registered model's val reference before any
prediction, and stop the run there when ``drift.action`` is fail."""

from typing import Annotated

import mlflow
import numpy as np
import pandas as pd
from zenml import log_metadata, step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.infer.ensemble import EnsembleModel
from cxr.errors import DataError, list_problems
from cxr.infer.serving import decode_members, serving_preprocess
from cxr.metrics.drift import DRIFT_ACTIONS, DriftConfig, drift_report, reference
from cxr.runtime import seeded_sample
from steps.registry.lifecycle import served_model

logger = get_logger(__name__)
MIN_IMAGES = 2


@step(experiment_tracker=True, enable_cache=False)
def check_drift(images: ImageSet, model_uri: str, cfg: DriftConfig) -> Annotated[pd.DataFrame, "drift_report"]:
    """Decode a seeded sample of at most ``cfg.max_images`` of the batch's files with the
    model's preprocessing and run ``cfg.tests`` against each model's (each member's) stored val
    reference. The report goes to MLflow (``drift/<test>_p_value``, ``drift/drifted``,
    ``drift/report.csv``), to the ZenML run's metadata and out as the ``drift_report``
    artifact; then ``cfg.action`` runs (``fail`` raises, so no prediction is written).
    YAML: ``parameters.drift`` of the inference pipeline.
    """
    model = served_model(model_uri)
    members = model.members if isinstance(model, EnsembleModel) else {"model": model}
    files = images.subset(seeded_sample(np.arange(len(images)), cfg.max_images, cfg.seed))
    reports = []
    skip = ("no tests are configured" if not cfg.tests else
            f"the batch has {len(images)} image(s), fewer than {MIN_IMAGES}" if len(images) < MIN_IMAGES else
            "it has no drift reference (registered before drift checks, or without guardrails)"
            if not all(reference(m) for m in members.values()) else "")
    if skip and (cfg.action == "warn" or not cfg.tests):
        logger.warning("no drift check of %s: %s", model_uri, skip)
        return pd.DataFrame(columns=["test", "statistic", "p_value", "alpha", "drifted", "features"])
    paths = files.manifest["path"].tolist()
    decoded, errors = decode_members(members, paths, files.ids, paths)  # once per distinct preprocessing
    if errors:
        raise DataError(f"{len(errors)} image(s) of the batch could not be decoded:"
                        + list_problems(list(errors.values())))
    for name, checkpoint in members.items():
        pixels = decoded[serving_preprocess(checkpoint).model_dump_json()].images
        reports.append(drift_report(checkpoint, pixels, cfg).assign(member=name))
    report = pd.concat(reports, ignore_index=True)
    ensemble = isinstance(model, EnsembleModel)
    if not ensemble:
        report = report.drop(columns="member")
    keys = [f"{r.member}_{r.test}" if ensemble else r.test for r in report.itertuples()]
    drifted = bool(report["drifted"].any())
    mlflow.log_metrics({"drift/drifted": float(drifted), "drift/images": float(len(files)),
                        **{f"drift/{k}_p_value": float(p) for k, p in zip(keys, report["p_value"])},
                        **{f"drift/{k}_statistic": float(v) for k, v in zip(keys, report["statistic"])}})
    mlflow.log_text(report.to_csv(index=False), "drift/report.csv")
    log_metadata({"drift": {"drifted": drifted, "images": len(files), "action": cfg.action,
                            **{k: {"p_value": float(r.p_value), "drifted": bool(r.drifted)}
                               for k, r in zip(keys, report.itertuples())}}})
    summary = DRIFT_ACTIONS.create(cfg.action, report)
    (logger.warning if drifted else logger.info)("drift check on %d of %d images: %s", len(files), len(images),
                                                 summary)
    return report
