"""register_ensemble step: log the kept members and their weights as one pyfunc version."""

from typing import Annotated, List, Optional

import numpy as np
import pandas as pd
from zenml import step

from cxr.data.imageset import ImageSet
from cxr.infer.ensemble import EnsembleModel
from cxr.metrics.generalisation import part_labels, scored_part
from cxr.metrics.operating_points import OperatingPointConfig, fit_operating_points, point_tags
from cxr.models.checkpoint import Checkpoint
from steps.caching import code_cache_policy
from steps.registry.register_model import register_served


@step(experiment_tracker=True, cache_policy=code_cache_policy(__name__))
def register_ensemble(names: List[str], checkpoints: List[Checkpoint], ensemble_weights: dict, val_metrics: dict,
                      registered_model_name: str, images: Optional[ImageSet] = None,
                      val_predictions: Optional[pd.DataFrame] = None,
                      operating_points: OperatingPointConfig = OperatingPointConfig()) -> Annotated[int, "model_version"]:
    """Register the ensemble (kept members' checkpoints + weights) as a new version of
    ``registered_model_name``, so it is served, promoted and rolled back like a single model.
    Tags: val metrics, members, weighting, operating points (fitted on the ensemble's
    ``val_predictions`` when given) and the ZenML run; ``images``' train split is recorded as
    for a single model.
    """
    by_name = dict(zip(names, checkpoints))
    kept = ensemble_weights["members"]
    model = EnsembleModel({m: by_name[m] for m in kept}, np.asarray(ensemble_weights["weights"]),
                          ensemble_weights["weighting"])
    if val_predictions is not None and images is not None:
        val = images.split("val")
        y, mask = part_labels(val, model.label_names)
        model.operating_points = fit_operating_points(
            y, scored_part(val, val_predictions, model.label_names, "val"), model.label_names, operating_points, mask)
    return register_served(model, val_metrics, registered_model_name,
                           {"ensemble_members": ",".join(kept), "weighting": model.weighting,
                            "backbone": "+".join(by_name[m].meta.model.backbone for m in kept)}
                           | point_tags(model.operating_points), images)
