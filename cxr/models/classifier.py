"""The classifier: a timm backbone plus a head, built from a ``ModelConfig``."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from cxr.models.backbones import create_backbone, feature_dim, freeze
from cxr.models.heads import HEADS, HeadName


class ModelConfig(BaseModel):
    """Architecture knobs (``parameters.model`` in YAML); stored in every checkpoint."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = Field("resnet18", description="timm model name")
    pretrained: bool = Field(False, description="timm hub weights (online); see weights_path")
    weights_path: str | None = Field(None, description="local backbone weights file")
    head: HeadName = Field("linear", description="a registered head: linear, mlp or attention")
    head_drop_rate: float = Field(0.0, ge=0, lt=1)
    head_batch_norm: bool = Field(False, description="BatchNorm in the linear or mlp head")
    drop_path_rate: float | None = Field(None, ge=0, lt=1, description="stochastic depth")
    freeze_backbone: bool = Field(False, description="train the head only")


class Classifier(nn.Module):
    """Backbone features -> head logits; one logit per label."""

    def __init__(self, cfg: ModelConfig, num_classes: int, load_weights: bool = True):
        super().__init__()
        self.backbone = create_backbone(
            cfg.backbone, pretrained=cfg.pretrained and load_weights,
            weights_path=cfg.weights_path if load_weights else None,
            drop_path_rate=cfg.drop_path_rate)
        self.head = HEADS.create_from(cfg.head, feature_dim(self.backbone), num_classes,
                                      knobs={"drop_rate": cfg.head_drop_rate, "batch_norm": cfg.head_batch_norm})
        self.frozen_backbone = cfg.freeze_backbone
        if self.frozen_backbone:
            freeze(self.backbone)

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input to its last linear layer (``fc``): no hooks, so concurrent callers of
        one shared model each get their own batch's features."""
        return self.head.pre_logits(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
