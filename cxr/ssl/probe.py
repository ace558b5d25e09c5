"""Fast evaluation of a frozen backbone: linear probe and kNN on pooled features, as val AUC.

Used to compare SSL settings without fine-tuning: features are extracted once, then a
scikit-learn logistic regression (standardised features) and a cosine kNN vote are
scored per label over known labels.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxr.data.imageset import ImageSet
from cxr.metrics.classification import mean_auc
from cxr.models.backbones import create_backbone
from cxr.models.checkpoint import BackboneCheckpoint
from cxr.models.heads import global_avg_pool
from cxr.runtime import resolve_device, to_input


@torch.inference_mode()
def extract_features(checkpoint: BackboneCheckpoint, images: np.ndarray, batch_size: int = 128,
                     device: str = "auto") -> np.ndarray:
    """Pooled backbone features (N, C) of uint8 (N, H, W) images."""
    device = resolve_device(device)
    backbone = create_backbone(checkpoint.meta.backbone)
    backbone.load_state_dict(checkpoint.state_dict)
    backbone = backbone.eval().to(device)
    out = [global_avg_pool(backbone(to_input(images[i:i + batch_size], checkpoint.meta.mean,
                                             checkpoint.meta.std, device))).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def _per_label_scores(model_factory, train_x: np.ndarray, train: ImageSet, val_x: np.ndarray) -> np.ndarray:
    scores = np.zeros((len(val_x), len(train.label_names)))
    for j in range(len(train.label_names)):
        known = train.mask[:, j]
        model = model_factory().fit(train_x[known], train.labels[known, j] > 0.5)
        scores[:, j] = model.predict_proba(val_x)[:, 1]
    return scores


def probe(checkpoint: BackboneCheckpoint, train: ImageSet, val: ImageSet, k: int = 20,
          device: str = "auto") -> dict[str, float]:
    """Val mean AUC of a linear probe and of a kNN vote on the frozen backbone's features."""
    train_x = extract_features(checkpoint, train.images, device=device)
    val_x = extract_features(checkpoint, val.images, device=device)
    linear = _per_label_scores(lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                               train_x, train, val_x)
    knn = _per_label_scores(lambda: KNeighborsClassifier(n_neighbors=min(k, len(train_x)), metric="cosine",
                                                         weights="distance"), train_x, train, val_x)
    return {"linear_probe_auc": mean_auc(val.labels, linear, val.mask),
            "knn_auc": mean_auc(val.labels, knn, val.mask)}
