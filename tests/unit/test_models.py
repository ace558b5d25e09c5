"""Backbones, heads, classifier and safetensors checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from cxr.models.backbones import create_backbone, feature_dim
from cxr.models.checkpoint import Checkpoint, CheckpointMeta, load_checkpoint, save_checkpoint
from cxr.models.classifier import Classifier, ModelConfig
from cxr.models.heads import create_head, list_heads

BACKBONES = ["resnet10t", "mobilenetv3_small_050", "efficientnet_b0"]


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("head", list_heads())
def test_classifier_outputs_one_logit_per_label(name: str, head: str):
    torch.manual_seed(0)
    model = Classifier(ModelConfig(backbone=name, head=head, head_drop_rate=0.2), num_classes=3).eval()
    out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    out.sum().backward()


def test_feature_dim_is_the_real_output_width():
    backbone = create_backbone("mobilenetv3_small_050")
    assert feature_dim(backbone) == backbone(torch.zeros(1, 1, 64, 64)).shape[1]


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown timm backbone 'resnet9000'"):
        create_backbone("resnet9000")
    with pytest.raises(ValueError, match="unknown head 'transformer'"):
        create_head("transformer", 8, 1)


def test_attention_head_weights_space():
    torch.manual_seed(0)
    head = create_head("attention", 16, 2).eval()
    features = torch.randn(3, 16, 5, 5)
    out = head(features)
    attention = head.last_attention
    assert attention.shape == (3, 1, 5, 5) and ((attention > 0) & (attention < 1)).all()
    assert attention.std() > 0.01, "the map varies over space"
    pooled = (features * attention).sum(dim=(2, 3)) / attention.sum(dim=(2, 3))
    torch.testing.assert_close(out, head.fc(pooled))
    uniform = features.mean(dim=(2, 3), keepdim=True).expand_as(features)
    torch.testing.assert_close(head(uniform), head.fc(uniform[:, :, 0, 0]))


def test_mlp_head_is_the_reference_shape():
    head = create_head("mlp", 64, 1, batch_norm=True)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 1024), (1024, 512), (512, 1)]
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules())


def test_local_weights_file_initialises_the_backbone(tmp_path: Path):
    torch.manual_seed(1)
    source = timm.create_model("resnet10t", num_classes=0, in_chans=1)
    path = tmp_path / "resnet10t.safetensors"
    save_file(source.state_dict(), str(path))
    model = Classifier(ModelConfig(backbone="resnet10t", weights_path=str(path)), 1)
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], tensor), name
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        Classifier(ModelConfig(backbone="resnet10t", weights_path=str(tmp_path / "missing.safetensors")), 1)


def test_frozen_backbone_has_no_trainable_parameters_and_stays_in_eval():
    model = Classifier(ModelConfig(backbone="resnet10t", freeze_backbone=True), 1).train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert not model.backbone.training


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path: Path):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet10t", head="mlp")
    model = Classifier(cfg, 2).eval()
    meta = CheckpointMeta(model=cfg, image_size=32, label_names=["a", "b"], mean=0.5, std=0.25,
                          epoch=3, val_metrics={"val_auc": 0.9})
    folder = save_checkpoint(Checkpoint.from_model(model, meta), tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.safetensors"]
    loaded = load_checkpoint(folder)
    assert loaded.meta == meta
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.build_model()(x), model(x))


def test_incomplete_checkpoint_is_named(tmp_path: Path):
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="lacks model.safetensors"):
        load_checkpoint(tmp_path)


def test_linear_head_batch_norm_standardises_features_scale_free():
    torch.manual_seed(0)
    head = create_head("linear", 8, 1, batch_norm=True).train()
    features = torch.randn(64, 8, 2, 2)
    logits = head(features)
    assert torch.allclose(head(features * 1000.0 + 5.0), logits, atol=1e-3)
    plain = create_head("linear", 8, 1)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.modules())


@pytest.mark.parametrize("head", ["linear", "mlp", "attention"])
def test_penultimate_is_what_the_last_linear_layer_receives(head: str):
    torch.manual_seed(0)
    model = Classifier(ModelConfig(backbone="resnet10t", head=head), 3).eval()
    x = torch.randn(4, 1, 32, 32)
    captured = []
    hook = model.head.fc.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    with torch.no_grad():
        logits = model(x)
        features = model.penultimate(x)
    hook.remove()
    torch.testing.assert_close(features, captured[0])
    torch.testing.assert_close(model.head.fc(features), logits)
