"""SSL methods as (heads, loss) pairs around one backbone, built from lightly's pieces.

Every method takes ``hidden_dim`` and ``out_dim`` for its projection head (each method's
paper defaults otherwise). Its ``loss(views, step, max_steps)`` returns the training loss and the
projection embeddings of the first view (for collapse monitoring). ``views[0]`` and
``views[1]`` are the two positives (two augmentations of one image, or of an image and its
nearest neighbour); SwAV also takes ``small_views`` low-resolution crops after them.

References: SimSiam (arXiv:2011.10566), MoCo v2 (arXiv:2003.04297), SimCLR
(arXiv:2002.05709), BYOL (arXiv:2006.07733), SwAV (arXiv:2006.09882).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity, NTXentLoss, SwaVLoss
from lightly.models.modules import (BYOLPredictionHead, BYOLProjectionHead, MoCoProjectionHead,
                                    SimCLRProjectionHead, SimSiamPredictionHead, SimSiamProjectionHead,
                                    SwaVProjectionHead, SwaVPrototypes)
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from cxr.models.heads import global_avg_pool
from cxr.registry import Registry

Views = list[torch.Tensor]
SSL_METHODS = Registry("SSL method")
register_ssl_method = SSL_METHODS.register
list_ssl_methods = SSL_METHODS.names
SSLMethodName = SSL_METHODS.choice()


def create_ssl_method(name: str, backbone: nn.Module, feature_dim: int, **kwargs) -> "SSLMethod":
    """The method registered as ``name`` around ``backbone``; None kwargs keep its defaults."""
    return SSL_METHODS.create(name, backbone, feature_dim, **kwargs)


class SSLMethod(nn.Module, ABC):
    """A backbone plus method heads; subclasses define ``loss``."""

    small_views = 0

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (B, C)."""
        return global_avg_pool(self.backbone(x))

    @abstractmethod
    def loss(self, views: Views, step: int, max_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(training loss, first-view embeddings) for one batch of views."""


class _MomentumMixin:
    """EMA copies of the backbone and a projection head (MoCo, BYOL)."""

    def _make_momentum(self, projection: nn.Module) -> None:
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_momentum = copy.deepcopy(projection)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_momentum)

    def _momentum_step(self, projection: nn.Module, step: int, max_steps: int, start: float) -> None:
        m = cosine_schedule(step, max_steps, start, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(projection, self.projection_momentum, m)

    @torch.no_grad()
    def _momentum_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_momentum(global_avg_pool(self.backbone_momentum(x)))


@register_ssl_method("simsiam")
class SimSiam(SSLMethod):
    """SimSiam: 3-layer projection to ``out_dim``, 2-layer predictor with a ``pred_hidden`` bottleneck,
    symmetric negative cosine loss with stop-gradient."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int = 2048, out_dim: int = 2048,
                 pred_hidden: int = 512):
        super().__init__(backbone)
        self.projection = SimSiamProjectionHead(feature_dim, hidden_dim, out_dim)
        self.prediction = SimSiamPredictionHead(out_dim, pred_hidden, out_dim)
        self.criterion = NegativeCosineSimilarity()

    def loss(self, views: Views, step: int, max_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        za, zb = self.projection(self.embed(views[0])), self.projection(self.embed(views[1]))
        pa, pb = self.prediction(za), self.prediction(zb)
        return 0.5 * (self.criterion(pa, zb.detach()) + self.criterion(pb, za.detach())), za.detach()


@register_ssl_method("simclr")
class SimCLR(SSLMethod):
    """SimCLR: 2-layer projection to ``out_dim``, NT-Xent over the other views of the batch."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int = 2048, out_dim: int = 128,
                 temperature: float = 0.5):
        super().__init__(backbone)
        self.projection = SimCLRProjectionHead(feature_dim, hidden_dim, out_dim)
        self.criterion = NTXentLoss(temperature=temperature)

    def loss(self, views: Views, step: int, max_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        za, zb = self.projection(self.embed(views[0])), self.projection(self.embed(views[1]))
        return self.criterion(za, zb), za.detach()


@register_ssl_method("moco")
class MoCo(_MomentumMixin, SSLMethod):
    """MoCo v2: momentum key encoder, NT-Xent against a memory bank of past keys."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int = 2048, out_dim: int = 128,
                 temperature: float = 0.2, memory_bank_size: int = 4096, momentum_start: float = 0.996):
        super().__init__(backbone)
        self.projection = MoCoProjectionHead(feature_dim, hidden_dim, out_dim)
        self._make_momentum(self.projection)
        self.criterion = NTXentLoss(temperature=temperature, memory_bank_size=(memory_bank_size, out_dim))
        self.momentum_start = momentum_start

    def loss(self, views: Views, step: int, max_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._momentum_step(self.projection, step, max_steps, self.momentum_start)
        query = self.projection(self.embed(views[0]))
        return self.criterion(query, self._momentum_embed(views[1])), query.detach()


@register_ssl_method("byol")
class BYOL(_MomentumMixin, SSLMethod):
    """BYOL: online projection + predictor regress the momentum encoder's projection (symmetric)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int = 4096, out_dim: int = 256,
                 momentum_start: float = 0.99):
        super().__init__(backbone)
        self.projection = BYOLProjectionHead(feature_dim, hidden_dim, out_dim)
        self.prediction = BYOLPredictionHead(out_dim, hidden_dim, out_dim)
        self._make_momentum(self.projection)
        self.criterion = NegativeCosineSimilarity()
        self.momentum_start = momentum_start

    def loss(self, views: Views, step: int, max_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._momentum_step(self.projection, step, max_steps, self.momentum_start)
        za, zb = self.projection(self.embed(views[0])), self.projection(self.embed(views[1]))
        pa, pb = self.prediction(za), self.prediction(zb)
        ta, tb = self._momentum_embed(views[0]), self._momentum_embed(views[1])
        return 0.5 * (self.criterion(pa, tb) + self.criterion(pb, ta)), za.detach()


@register_ssl_method("swav")
class SwaV(SSLMethod):
    """SwAV: online clustering onto learnable prototypes with Sinkhorn codes; multi-crop."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int = 2048, out_dim: int = 128,
                 n_prototypes: int = 256, small_views: int = 4, frozen_prototype_steps: int = 100):
        super().__init__(backbone)
        self.projection = SwaVProjectionHead(feature_dim, hidden_dim, out_dim)
        self.prototypes = SwaVPrototypes(out_dim, n_prototypes=n_prototypes,
                                         n_steps_frozen_prototypes=frozen_prototype_steps)
        self.criterion = SwaVLoss()
        self.small_views = small_views

    def loss(self, views: Views, step: int, max_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.prototypes.normalize()
        embeddings = [F.normalize(self.projection(self.embed(v)), dim=1) for v in views]
        scores = [self.prototypes(z, step) for z in embeddings]
        return self.criterion(scores[:2], scores[2:]), embeddings[0].detach()
