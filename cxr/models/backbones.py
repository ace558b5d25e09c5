"""Backbones: any timm model by name, returning spatial features for the heads to pool.

``pretrained=True`` downloads timm/Hugging Face weights (online users); ``weights_path``
loads a local file instead (safetensors or a weights-only torch file), adapted to one input
channel by timm. Random init is ``pretrained=False`` with no ``weights_path``.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn


def create_backbone(name: str, pretrained: bool = False, weights_path: str | None = None,
                    in_chans: int = 1, **kwargs) -> nn.Module:
    """A timm model without classifier or pooling (``forward`` gives feature maps/tokens).

    Args:
        name: timm model name, e.g. ``resnet18``, ``efficientnet_b0``, ``convnext_tiny``.
        pretrained: load the timm hub weights for ``name`` (needs network or a warm cache).
        weights_path: local weights file used instead of the hub when given.
        in_chans: input channels; 1 for grayscale X-rays (pretrained stems are summed).
        **kwargs: timm knobs such as ``drop_path_rate``; None values are dropped.
    """
    if name not in timm.list_models():
        raise ValueError(f"unknown timm backbone {name!r} (see timm.list_models())")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file {path} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        pretrained = True
    return timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="",
                             in_chans=in_chans, **kwargs)


@torch.no_grad()
def feature_dim(backbone: nn.Module, in_chans: int = 1) -> int:
    """Channels of the backbone's output, from one small forward pass.

    ``num_features`` is not always the output width (MobileNetV3 adds a conv head).
    """
    was_training = backbone.training
    out = backbone.eval()(torch.zeros(1, in_chans, 64, 64))
    backbone.train(was_training)
    return int(out.shape[1] if out.ndim == 4 else out.shape[-1])


def freeze(module: nn.Module) -> None:
    """Stop gradients through ``module`` and keep its norm statistics fixed."""
    module.requires_grad_(False)
    module.eval()


def is_frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def channels_last_if_cuda(module: nn.Module, device: torch.device) -> nn.Module:
    """channels_last memory format on CUDA, where convolutions run faster in it."""
    return module.to(memory_format=torch.channels_last) if device.type == "cuda" else module
