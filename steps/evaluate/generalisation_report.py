"""generalisation_report step: per-label AUC on val, proxy and external sets, and each gap to val."""

from typing import Annotated, List, Tuple

import mlflow
import pandas as pd
from PIL import Image
from zenml import log_metadata, step
from zenml.logger import get_logger

from cxr.metrics.generalisation import gap_table
from cxr.metrics.plots import auc_by_set
from steps.caching import code_cache_policy

logger = get_logger(__name__)


@step(experiment_tracker=True, cache_policy=code_cache_policy(__name__))
def generalisation_report(val_report: pd.DataFrame, proxy_report: pd.DataFrame,
                          external_reports: List[pd.DataFrame], external_names: List[str]) -> Tuple[
    Annotated[pd.DataFrame, "generalisation_report"],
    Annotated[Image.Image, "auc_by_set"],
]:
    """One row per label plus ``mean``: AUC on val, proxy and each labelled external set, and
    ``gap_<set>`` = val minus that set, as ``generalisation_report.csv``, metrics
    ``gap_<set>_mean_auc`` and a bar plot in MLflow. Empty tables (no proxy, unlabelled
    sets) are left out.
    """
    named = {"val": val_report, "proxy": proxy_report} | {f"external/{n}": r for n, r in
                                                         zip(external_names, external_reports)}
    table = gap_table({name: report for name, report in named.items() if len(report)})
    mean = table.set_index("label").loc["mean"]
    gaps = {f"gap_{k.removeprefix('gap_').replace('/', '_')}_mean_auc": float(v) for k, v in mean.items()
            if k.startswith("gap_")}
    plot = auc_by_set(table)
    mlflow.log_metrics(gaps)
    mlflow.log_text(table.to_csv(index=False), "generalisation_report.csv")
    mlflow.log_image(plot, artifact_file="plots/auc_by_set.png")
    logger.info("AUC by evaluation set, and val minus each:\n%s", table.round(4).to_string(index=False))
    log_metadata(gaps)
    return table, plot
