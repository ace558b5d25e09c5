"""Data-parallel fine-tuning: two torchrun processes on CPU (Gloo), as on a multi-GPU node."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.infer.predict import predict_proba
from cxr.metrics.classification import mean_auc
from cxr.models.checkpoint import BackboneCheckpoint, BackboneMeta
from cxr.models.classifier import Classifier, ModelConfig
from cxr.train.config import TrainConfig
from cxr.train.distributed import fit_data_parallel
from cxr.train.loop import val_loss

TWO_PROCESSES = dict(processes=2, device="cpu", batch_size=16, lr=3e-3, num_threads=1)


def test_two_processes_train_one_model_on_disjoint_halves(synthetic_split):
    train, val = synthetic_split
    rows = []
    result = fit_data_parallel(train, val, ModelConfig(backbone="resnet10t"), TrainConfig(epochs=4, **TWO_PROCESSES),
                               progress=False, on_epoch=rows.append)
    history = result.history
    assert len(rows) == len(history) == 4 and history["val_auc"].max() > 0.9
    seen = history["train_images_per_s"] * history["train_seconds"]
    np.testing.assert_allclose(seen, len(train) // 2 * 2, rtol=1e-6)
    # the gathered val scores are the rank-0 checkpoint's own: weights and BatchNorm statistics
    # synchronised, shares gathered in order
    meta = result.checkpoint.meta
    probs = predict_proba(result.checkpoint.build_model(), val.images, meta.mean, meta.std, device="cpu")
    assert mean_auc(val.labels, probs, val.mask) == pytest.approx(meta.val_metrics["val_auc"], abs=1e-6)
    assert val_loss(probs, val) == pytest.approx(meta.val_metrics["val_loss"], abs=1e-6)


def test_a_failing_worker_raises_with_its_exit_code(synthetic_split):
    train, val = synthetic_split
    meta = BackboneMeta(backbone="resnet10t", image_size=32, method="simsiam", positives="views", epochs=1,
                        mean=0.5, std=0.2, final_loss=0.0, embedding_std=1.0)
    backbone = BackboneCheckpoint.from_module(Classifier(ModelConfig(backbone="resnet10t"), 1).backbone, meta)
    with pytest.raises(RuntimeError, match="2 processes failed .*torchrun exit"):
        fit_data_parallel(train, val, ModelConfig(backbone="resnet18"), TrainConfig(epochs=1, **TWO_PROCESSES),
                          progress=False, backbone_init=backbone)


def test_processes_refuse_a_pinned_device():
    with pytest.raises(ValueError, match="one process per GPU"):
        TrainConfig(processes=2, device="cuda:1")
