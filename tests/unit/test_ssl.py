"""SSL views, methods, the pretraining loop, collapse detection and probes on generated images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

import cxr.ssl.pretrain as pretrain_module
from cxr.models.backbones import create_backbone, feature_dim
from cxr.models.checkpoint import BackboneCheckpoint, BackboneMeta
from cxr.models.classifier import ModelConfig
from cxr.ssl.methods import create_ssl_method, list_ssl_methods
from cxr.ssl.pretrain import (RepresentationCollapseWarning, SSLConfig, collapse_check, positive_pairs,
                              pretrain)
from cxr.ssl.probe import probe
from cxr.ssl.transforms import SSLAugmentConfig, ssl_view
from cxr.train.config import TrainConfig
from cxr.train.loop import fit
from tests.helpers import labelled_split, synthetic_xray

HEADS = {"hidden_dim": 64, "out_dim": 32}
SMALL = {"simsiam": {"pred_hidden": 16}, "moco": {"memory_bank_size": 32},
         "swav": {"small_views": 2, "n_prototypes": 16, "frozen_prototype_steps": 0}}
BANK_FILL_STEPS = {"moco": 2}  # lightly's memory bank starts with random keys


@pytest.fixture(scope="module")
def pool() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([synthetic_xray(rng, 32, positive=bool(i % 2)) for i in range(48)])


def test_methods_are_registered():
    assert list_ssl_methods() == ["byol", "moco", "simclr", "simsiam", "swav"]
    with pytest.raises(ValueError, match="unknown SSL method 'dino'"):
        create_ssl_method("dino", nn.Identity(), 8)


@pytest.mark.parametrize("name", ["simsiam", "moco", "simclr", "byol", "swav"])
def test_loss_goes_down_on_a_fixed_batch(name: str, pool: np.ndarray):
    torch.manual_seed(0)
    backbone = create_backbone("resnet10t")
    method = create_ssl_method(name, backbone, feature_dim(backbone), **HEADS, **SMALL.get(name, {}))
    generator = torch.Generator().manual_seed(0)
    x = torch.from_numpy(pool[:16]).unsqueeze(1).float() / 255
    views = [ssl_view(x, SSLAugmentConfig(), generator) for _ in range(2)]
    views += [ssl_view(x, SSLAugmentConfig(), generator, 16, (0.1, 0.4)) for _ in range(method.small_views)]
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(12):
        loss, embeddings = method.loss(views, step, 12)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and embeddings.shape[0] == 16
    start = BANK_FILL_STEPS.get(name, 0)
    assert np.mean(losses[-3:]) < np.mean(losses[start:start + 2]), losses


def test_views_are_seeded_bounded_and_resizable():
    x = torch.rand(4, 1, 32, 32)
    a = ssl_view(x, SSLAugmentConfig(), torch.Generator().manual_seed(1))
    b = ssl_view(x, SSLAugmentConfig(), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1 and not torch.equal(a, x)
    assert ssl_view(x, SSLAugmentConfig(), output_size=16).shape == (4, 1, 16, 16)


def test_collapse_detector_fires_on_constant_embeddings_only():
    assert collapse_check(torch.ones(64, 128), 0.2) == (0.0, True)
    score, collapsed = collapse_check(torch.randn(256, 128), 0.2)
    assert 0.8 < score < 1.2 and not collapsed


class ConstantEncoder(nn.Module):
    """A backbone whose output ignores its input (a collapsed representation)."""

    def __init__(self, channels: int = 16):
        super().__init__()
        self.bias = nn.Parameter(torch.ones(channels))
        self.num_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.view(1, -1, 1, 1).expand(len(x), -1, 2, 2)


def test_pretrain_warns_on_a_constant_encoder(pool: np.ndarray, monkeypatch):
    monkeypatch.setattr(pretrain_module, "create_backbone", lambda name: ConstantEncoder())
    cfg = SSLConfig(positives="two_views", epochs=1, batch_size=16, **HEADS)
    with pytest.warns(RepresentationCollapseWarning, match="collapsed"):
        _, history = pretrain(pool, "constant", cfg, progress=False)
    assert history["collapsed"].all()


def test_pretrain_stays_quiet_on_a_healthy_encoder(pool: np.ndarray, recwarn):
    cfg = SSLConfig(positives="two_views", epochs=1, batch_size=16, **HEADS)
    _, history = pretrain(pool, "resnet10t", cfg, progress=False)
    assert not [w for w in recwarn if issubclass(w.category, RepresentationCollapseWarning)]
    assert not history["collapsed"].any() and history["embedding_std"].iloc[0] > 0.2


def test_positive_pairs_modes_and_errors():
    assert positive_pairs(3, None, "two_views").tolist() == [[0, 0], [1, 1], [2, 2]]
    pairs = np.array([[0, 1], [1, 0]])
    assert positive_pairs(3, pairs, "nn_pairs") is pairs
    with pytest.raises(ValueError, match="needs the pairs"):
        positive_pairs(3, None, "nn_pairs")
    with pytest.raises(ValueError, match="outside the 3 pool images"):
        positive_pairs(3, np.array([[0, 5]]), "nn_pairs")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple:
    return labelled_split(tmp_path_factory.mktemp("ssl"), n_per_class=24)


def test_pretrained_backbone_initialises_fit_frozen_or_trainable(labelled):
    train, val = labelled
    pairs = np.column_stack([np.arange(len(train)), np.roll(np.arange(len(train)), 1)])
    backbone, history = pretrain(train.images, "resnet10t", SSLConfig(epochs=2, batch_size=8, **HEADS), pairs, progress=False)
    assert list(history["epoch"]) == [1, 2] and backbone.meta.method == "simsiam"
    assert backbone.state_dict.keys() == create_backbone("resnet10t").state_dict().keys()
    frozen = fit(train, val, ModelConfig(backbone="resnet10t", freeze_backbone=True),
                 TrainConfig(epochs=1, batch_size=8), progress=False, backbone_init=backbone)
    for name, tensor in backbone.state_dict.items():
        assert torch.equal(frozen.checkpoint.state_dict[f"backbone.{name}"], tensor), name
    trainable = fit(train, val, ModelConfig(backbone="resnet10t"), TrainConfig(epochs=1, batch_size=8),
                    progress=False, backbone_init=backbone)
    changed = [n for n, t in backbone.state_dict.items()
               if t.dtype.is_floating_point and not torch.equal(trainable.checkpoint.state_dict[f"backbone.{n}"], t)]
    assert changed
    with pytest.raises(ValueError, match="pretrained backbone is 'resnet10t'"):
        fit(train, val, ModelConfig(backbone="resnet18"), TrainConfig(epochs=1), progress=False,
            backbone_init=backbone)


def pooled_by_hand(backbone: nn.Module, images: np.ndarray) -> np.ndarray:
    """Spatial mean of the backbone's feature map of uint8 images normalised as (x/255 - 0.5) / 0.25."""
    x = (torch.from_numpy(images).float()[:, None] / 255 - 0.5) / 0.25
    with torch.no_grad():
        return backbone(x).mean(dim=(2, 3)).numpy()


def test_probe_scores_are_scikit_learn_fits_on_pooled_features(labelled):
    train, val = labelled
    torch.manual_seed(0)
    backbone = create_backbone("resnet10t").eval()
    meta = BackboneMeta(backbone="resnet10t", image_size=32, method="simsiam", positives="two_views", epochs=0,
                        mean=0.5, std=0.25, final_loss=0.0, embedding_std=1.0)
    train_x, val_x = pooled_by_hand(backbone, train.images), pooled_by_hand(backbone, val.images)
    y, val_y = train.labels[:, 0] > 0.5, val.labels[:, 0]
    linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(train_x, y)
    knn = KNeighborsClassifier(n_neighbors=5, metric="cosine", weights="distance").fit(train_x, y)
    scores = probe(BackboneCheckpoint.from_module(backbone, meta), train, val, k=5, device="cpu")
    assert scores["linear_probe_auc"] == pytest.approx(roc_auc_score(val_y, linear.predict_proba(val_x)[:, 1]))
    assert scores["knn_auc"] == pytest.approx(roc_auc_score(val_y, knn.predict_proba(val_x)[:, 1]))
    assert scores["linear_probe_auc"] > 0.8, "the opacity is visible even to random features"
