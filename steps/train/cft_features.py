"""cft_features step: penultimate features of the train and val rows, extracted once."""

from typing import Annotated, Tuple

import numpy as np
from zenml import step

from cxr.cft.head import penultimate_features
from cxr.data.imageset import ImageSet
from cxr.models.checkpoint import Checkpoint
from steps.caching import code_cache_policy


@step(cache_policy=code_cache_policy(__name__))
def cft_features(checkpoint: Checkpoint, images: ImageSet, batch_size: int = 128, device: str = "auto") -> Tuple[
    Annotated[np.ndarray, "train_features"],
    Annotated[np.ndarray, "val_features"],
]:
    """(N, D) float32 inputs of the last layer for the 'train' and 'val' rows (no TTA).

    A cached artifact of its own, so GA settings can change without re-running the backbone.
    """
    return (penultimate_features(checkpoint, images.split("train").images, batch_size, device),
            penultimate_features(checkpoint, images.split("val").images, batch_size, device))
