"""tta_predict step: probabilities averaged over test-time views."""

from typing import Annotated, Optional

import pandas as pd
from zenml import step

from cxr.data.imageset import ImageSet
from cxr.infer.tta import REFERENCE_VIEWS, predict_imageset
from cxr.models.checkpoint import Checkpoint
from steps.caching import code_cache_policy


@step(cache_policy=code_cache_policy(__name__))
def tta_predict(checkpoint: Checkpoint, images: ImageSet, subset: Optional[str] = None,
                views: list[str] = list(REFERENCE_VIEWS), batch_size: int = 64,
                device: str = "auto") -> Annotated[pd.DataFrame, "predictions"]:
    """Predict ``images`` (only the rows of split ``subset`` when given) with TTA.

    The default views are the reference five (original, horizontal flip, rotate +5 and -5
    degrees, center zoom), stacked into one forward pass per batch. Returns ``id`` plus one
    probability column per label. YAML: ``steps.<id>.parameters.views``.
    """
    part = images.split(subset) if subset else images
    return predict_imageset(checkpoint, part, views, batch_size, device)
