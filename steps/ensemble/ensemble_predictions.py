"""ensemble_predictions step: weight the members' TTA predictions by their val AUC."""

from typing import Annotated, List, Tuple

import mlflow
import pandas as pd
from zenml import log_metadata, step
from zenml.logger import get_logger

from cxr.data.imageset import ImageSet
from cxr.infer.ensemble import EnsembleConfig, ensemble_report
from steps.caching import code_cache_policy

logger = get_logger(__name__)


@step(experiment_tracker=True, cache_policy=code_cache_policy(__name__))
def ensemble_predictions(names: List[str], val_predictions: List[pd.DataFrame], test_predictions: List[pd.DataFrame],
                         images: ImageSet, cfg: EnsembleConfig) -> Tuple[
    Annotated[pd.DataFrame, "ensemble_val_predictions"],
    Annotated[pd.DataFrame, "ensemble_test_predictions"],
    Annotated[pd.DataFrame, "ensemble_report"],
    Annotated[dict, "ensemble_weights"],
]:
    """Fit the member selection and weights on val predictions only, apply them to val and test.

    The report lists each member's val AUC, its weight (mean over labels) or why it was
    dropped, the ensemble's val AUC, and the same recipe's 2-fold patient-level cross-fitted
    val AUC (the honest one: no row is scored by weights fitted on it); it goes to MLflow as
    ``ensemble_report.csv``. ``ensemble_weights`` (kept members, (M, L) weights, weighting)
    is what ``register_ensemble`` serves.
    """
    val = images.split("val")
    labels = list(val.label_names)
    val_preds = {n: p[labels].to_numpy() for n, p in zip(names, val_predictions)}
    ensemble, report = ensemble_report(val_preds, val.labels, val.mask, val.manifest["patient_id"].to_numpy(), cfg)
    auc = dict(zip(report["member"], report["val_auc"]))
    mlflow.log_metrics({f"val_auc_{n}": auc[n] for n in names}
                       | {"val_auc_ensemble": auc["ensemble"], "val_auc_ensemble_cross_fit": auc["ensemble_cross_fit"]})
    mlflow.log_text(report.to_csv(index=False), "ensemble_report.csv")
    logger.info("ensemble (%s):\n%s", cfg.weighting, report.round(4).to_string(index=False))
    log_metadata({"val_auc_ensemble": auc["ensemble"], "members": ensemble.members})
    combined_test = ensemble.combine({n: p[labels].to_numpy() for n, p in zip(names, test_predictions)})
    weights = {"members": ensemble.members, "weights": ensemble.weights.tolist(), "weighting": cfg.weighting}
    return (predictions_frame(val_predictions[0]["id"], labels, ensemble.combine(val_preds)),
            predictions_frame(test_predictions[0]["id"], labels, combined_test), report, weights)


def predictions_frame(ids: pd.Series, labels: list[str], values) -> pd.DataFrame:
    """``id`` plus one probability column per label."""
    return pd.DataFrame({"id": ids, **dict(zip(labels, values.T))})
