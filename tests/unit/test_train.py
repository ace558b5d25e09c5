"""The fine-tune loop and its pieces on generated images."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.data.sources import read_class_folders
from cxr.errors import DataError
from cxr.models.classifier import ModelConfig
from cxr.train.augment import AugmentConfig, augment_batch
from cxr.train.config import TrainConfig
from cxr.data.imageset import ImageSet, make_manifest
from cxr.train.loop import epoch_order, epoch_rows, fit, rows_per_epoch
from cxr.train.mixing import mix_batch
from cxr.train.optim import balanced_sample_weights, create_optimizer, create_schedule

FAST = dict(batch_size=16, lr=3e-3, num_threads=2)
SWAPPING_SEED = 1  # its first permutation of two rows is [1, 0]


def test_fit_learns_a_visible_finding(synthetic_split):
    train, val = synthetic_split
    result = fit(train, val, ModelConfig(backbone="resnet10t"), TrainConfig(epochs=6, **FAST), progress=False)
    assert result.history["val_auc"].max() > 0.9
    assert result.checkpoint.meta.epoch == int(result.history["val_auc"].idxmax()) + 1
    assert result.checkpoint.meta.val_metrics["val_auc"] == pytest.approx(result.history["val_auc"].max())
    assert 0 < result.checkpoint.meta.mean < 1 and result.checkpoint.meta.std > 0


def test_select_on_proxy_keeps_the_epoch_best_on_proxy(synthetic_split):
    from dataclasses import replace

    train, val = synthetic_split
    inverted = replace(val, labels=1 - val.labels)  # proxy AUC = 1 - val AUC: the two disagree on every epoch
    cfg = TrainConfig(epochs=4, select_on="proxy", **FAST)
    result = fit(train, val, ModelConfig(backbone="resnet10t"), cfg, progress=False, proxy=inverted)
    history = result.history
    np.testing.assert_allclose(history["proxy_auc"], 1 - history["val_auc"], atol=1e-9)
    assert result.checkpoint.meta.epoch == int(history["proxy_auc"].idxmax()) + 1
    assert result.checkpoint.meta.epoch != int(history["val_auc"].idxmax()) + 1
    assert set(result.checkpoint.meta.val_metrics) == {"val_auc", "val_loss", "proxy_auc", "proxy_loss"}
    with pytest.raises(DataError, match="no proxy split"):
        fit(train, val, ModelConfig(backbone="resnet10t"), cfg, progress=False)


def test_fit_is_deterministic_on_cpu(synthetic_split):
    train, val = synthetic_split
    cfg = TrainConfig(epochs=1, mixup_alpha=0.4, cutmix_alpha=1.0, balanced_sampler=True, **FAST)
    a = fit(train, val, ModelConfig(backbone="resnet10t"), cfg, progress=False)
    b = fit(train, val, ModelConfig(backbone="resnet10t"), cfg, progress=False)
    for name, tensor in a.checkpoint.state_dict.items():
        assert torch.equal(tensor, b.checkpoint.state_dict[name]), name


def test_early_stopping_stops_after_patience(synthetic_split):
    train, val = synthetic_split
    cfg = TrainConfig(epochs=6, early_stopping_patience=1, **{**FAST, "lr": 1e-9})
    result = fit(train, val, ModelConfig(backbone="resnet10t"), cfg, progress=False)
    aucs = result.history["val_auc"].tolist()
    assert len(aucs) < 6 and aucs[-1] <= max(aucs[:-1]), "stopped at the first epoch that did not improve"
    assert all(later > earlier for earlier, later in pairwise(aucs[:-1])), "every earlier epoch improved"


def test_frozen_backbone_keeps_backbone_weights(synthetic_split):
    train, val = synthetic_split
    torch.manual_seed(0)
    model_cfg = ModelConfig(backbone="resnet10t", freeze_backbone=True)
    result = fit(train, val, model_cfg, TrainConfig(epochs=1, seed=0, **FAST), progress=False)
    from cxr.models.classifier import Classifier
    torch.manual_seed(0)
    initial = Classifier(model_cfg, 1).state_dict()
    for name, tensor in result.checkpoint.state_dict.items():
        if name.startswith("backbone."):
            assert torch.equal(tensor, initial[name]), name


def test_on_epoch_receives_every_row(synthetic_split):
    train, val = synthetic_split
    rows = []
    result = fit(train, val, ModelConfig(backbone="resnet10t"), TrainConfig(epochs=2, **FAST), progress=False,
                 on_epoch=rows.append)
    assert [r["epoch"] for r in rows] == [1, 2] and all(np.isfinite(r["train_loss"]) for r in rows)
    assert rows == result.history.drop(columns="kept").to_dict("records")  # "kept" is known at the end


def test_fit_refuses_undecoded_or_one_class_val(synthetic_split, class_tree: Path):
    train, val = synthetic_split
    with pytest.raises(DataError, match="no decoded images"):
        fit(read_class_folders(class_tree, "NORMAL"), val, ModelConfig(), TrainConfig(), progress=False)
    negatives = val.subset(np.flatnonzero(val.labels[:, 0] == 0))
    with pytest.raises(DataError, match="single class"):
        fit(train, negatives, ModelConfig(), TrainConfig(), progress=False)


def test_augment_identity_when_every_knob_is_off():
    x = torch.rand(4, 1, 16, 16)
    off = AugmentConfig(hflip_prob=0, rotate_deg=0, scale_min=1, scale_max=1, translate=0,
                        brightness=0, contrast=0)
    torch.testing.assert_close(augment_batch(x, off), x, atol=1e-5, rtol=0)


def test_augment_flip_only_mirrors():
    x = torch.rand(3, 1, 16, 16)
    flip = AugmentConfig(hflip_prob=1, rotate_deg=0, scale_min=1, scale_max=1, translate=0,
                         brightness=0, contrast=0)
    torch.testing.assert_close(augment_batch(x, flip), torch.flip(x, dims=(-1,)), atol=1e-5, rtol=0)


def test_augment_is_seeded_and_bounded():
    x = torch.rand(4, 1, 16, 16)
    a = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(3))
    b = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1


def test_mixup_mixes_targets_like_pixels_and_joins_masks():
    x = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    y = torch.tensor([[0.0], [1.0]])
    mask = torch.tensor([[True], [False]])
    mixed_x, mixed_y, mixed_mask = mix_batch(x, y, mask, np.random.default_rng(SWAPPING_SEED), mixup_alpha=1.0)
    pixel_means = mixed_x.mean(dim=(1, 2, 3))
    torch.testing.assert_close(pixel_means, mixed_y[:, 0])
    assert ((pixel_means > 0) & (pixel_means < 1)).all(), "both images were mixed with the other"
    assert not mixed_mask.any(), "a label unknown in either image is unknown in the mix"


def test_cutmix_target_weight_is_the_pasted_area():
    rng = np.random.default_rng(5)
    x = torch.stack([torch.zeros(1, 32, 32), torch.ones(1, 32, 32)])
    y = torch.tensor([[0.0], [1.0]])
    mixed_x, mixed_y, _ = mix_batch(x, y, torch.ones(2, 1, dtype=torch.bool), rng, cutmix_alpha=1.0)
    torch.testing.assert_close(mixed_x.mean(dim=(1, 2, 3)), mixed_y[:, 0])


def test_balanced_weights_equalise_classes():
    labels = np.array([[1]] * 6 + [[0]] * 2, np.float32)
    weights = balanced_sample_weights(labels, np.ones_like(labels, bool))
    assert weights[:6].sum() == pytest.approx(0.5) and weights[6:].sum() == pytest.approx(0.5)


def test_weighted_epoch_order_draws_classes_evenly():
    labels = np.array([[1]] * 900 + [[0]] * 100, np.float32)
    weights = balanced_sample_weights(labels, np.ones_like(labels, bool))
    order = epoch_order(1000, weights, torch.Generator().manual_seed(0)).numpy()
    assert len(order) == 1000 and 0.45 < labels[order, 0].mean() < 0.55
    assert sorted(epoch_order(10, None, torch.Generator().manual_seed(0)).tolist()) == list(range(10))


def test_negative_undersampling_keeps_every_positive_and_a_fresh_share_of_negatives():
    labels = np.zeros((100, 2), np.float32)
    labels[:10, 0] = 1
    labels[10:20, 1] = 1
    mask = np.ones_like(labels, bool)
    mask[20:30, 1] = False
    labels[20:30, 1] = 1  # unknown positives do not count
    ids = [str(i) for i in range(100)]
    train = ImageSet(make_manifest(ids, ids), ("a", "b"), labels, mask)
    generator = torch.Generator().manual_seed(0)
    first, second = epoch_rows(train, 0.25, generator), epoch_rows(train, 0.25, generator)
    assert set(range(20)) <= set(first) and len(first) == 20 + 20 == rows_per_epoch(train, TrainConfig(
        negative_keep_fraction=0.25))
    assert set(first) != set(second)
    assert len(epoch_rows(train, 1.0, generator)) == 100


def test_samples_per_epoch_repeats_every_row_evenly():
    order = epoch_order(10, None, torch.Generator().manual_seed(0), size=25).numpy()
    assert len(order) == 25
    assert sorted(order[:10].tolist()) == sorted(order[10:20].tolist()) == list(range(10))
    assert len(set(order[20:].tolist())) == 5


@pytest.mark.parametrize("name", ["onecycle", "cosine_restarts", "plateau", "none"])
def test_schedules_step(name: str):
    model = torch.nn.Linear(2, 1)
    cfg = TrainConfig(scheduler=name, epochs=2, restart_epochs=3, plateau_patience=0)
    optimizer = create_optimizer(model, cfg)
    schedule = create_schedule(optimizer, cfg, steps_per_epoch=3)
    lrs = []
    for epoch in range(2):
        for _ in range(3):
            optimizer.step()
            schedule.step_batch()
        schedule.step_epoch(0.5)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert (lrs[0] == lrs[1] == cfg.lr) if name == "none" else lrs != [cfg.lr, cfg.lr]


def test_onecycle_survives_a_run_of_two_steps():
    model = torch.nn.Linear(2, 1)
    cfg = TrainConfig(scheduler="onecycle", epochs=1)
    optimizer = create_optimizer(model, cfg)
    schedule = create_schedule(optimizer, cfg, steps_per_epoch=2)
    for _ in range(2):
        optimizer.step()
        schedule.step_batch()
    assert 0 < optimizer.param_groups[0]["lr"] <= cfg.lr


@pytest.mark.parametrize("name", ["adamw", "sgd", "rmsprop"])
def test_optimizers_skip_decay_on_biases(name: str):
    optimizer = create_optimizer(torch.nn.Linear(3, 1), TrainConfig(optimizer=name, weight_decay=0.1))
    decays = sorted(g["weight_decay"] for g in optimizer.param_groups)
    assert type(optimizer).__name__.lower() == name and decays == [0.0, 0.1]


def test_train_config_names_bad_keys():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=0.1)
    with pytest.raises(ValueError, match="scale_min"):
        TrainConfig(augment=AugmentConfig(scale_min=1.2, scale_max=1.0))


OFF = dict(hflip_prob=0, rotate_deg=0, scale_min=1, scale_max=1, translate=0, brightness=0, contrast=0)


@pytest.mark.parametrize("knobs", [{"gamma": 0.5}, {"blur_prob": 1.0, "blur_sigma": 1.5}, {"noise_std": 0.1},
                                   {"jpeg_prob": 1.0, "jpeg_quality_min": 10},
                                   {"resample_prob": 1.0, "resample_scale_min": 0.3}])
def test_each_acquisition_augmentation_changes_images_within_range(knobs: dict):
    x = torch.rand(6, 1, 32, 32)
    a = augment_batch(x.clone(), AugmentConfig(**OFF, **knobs), torch.Generator().manual_seed(0))
    b = augment_batch(x.clone(), AugmentConfig(**OFF, **knobs), torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert (a - x).abs().mean() > 0.005 and a.min() >= 0 and a.max() <= 1


def test_blur_and_resampling_remove_detail_but_keep_the_mean():
    x = torch.rand(4, 1, 32, 32)
    for knobs in ({"blur_prob": 1.0, "blur_sigma": 2.0}, {"resample_prob": 1.0, "resample_scale_min": 0.25}):
        y = augment_batch(x.clone(), AugmentConfig(**OFF, **knobs), torch.Generator().manual_seed(0))
        assert y.std() < 0.8 * x.std(), knobs
        torch.testing.assert_close(y.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=0.03, rtol=0)


class Recorder:
    """Wraps ``create_averaging`` to keep the averaging object and the live weights after the
    last optimizer step (fit loads the kept weights into the live model when it ends)."""

    def __init__(self, monkeypatch):
        import cxr.train.loop as loop

        self.made, self.last_step = [], {}
        original = loop.create_averaging

        def create(name, model, total_epochs, **knobs):
            average = original(name, model, total_epochs, **knobs)
            after_step = average.after_step

            def recording(live, step):
                after_step(live, step)
                self.last_step = {k: v.detach().clone() for k, v in live.state_dict().items()}
            average.after_step = recording
            self.made.append(average)
            return average
        monkeypatch.setattr(loop, "create_averaging", create)


def test_ema_weights_are_the_checkpointed_ones_and_differ_from_the_last_step(synthetic_split, monkeypatch):
    train, val = synthetic_split
    recorder = Recorder(monkeypatch)
    result = fit(train, val, ModelConfig(backbone="resnet10t"), TrainConfig(epochs=1, averaging="ema", **FAST),
                 progress=False)
    ema_state, live_state = recorder.made[0].ema.module.state_dict(), recorder.last_step
    for name, tensor in result.checkpoint.state_dict.items():
        assert torch.equal(tensor, ema_state[name].cpu()), name
    weights = [n for n in live_state if n.endswith("weight")]
    assert sum(not torch.equal(ema_state[n], live_state[n]) for n in weights) == len(weights)
    assert result.history["averaged"].all()


def test_swa_checkpoints_an_average_of_the_last_epochs(synthetic_split, monkeypatch):
    train, val = synthetic_split
    recorder = Recorder(monkeypatch)
    cfg = TrainConfig(epochs=4, averaging="swa", swa_epochs=2, **FAST)
    result = fit(train, val, ModelConfig(backbone="resnet10t"), cfg, progress=False)
    average = recorder.made[0]
    assert average.swa.n_averaged.item() == 2
    assert result.history["averaged"].tolist() == [False, False, True, True]
    assert result.checkpoint.meta.epoch in (3, 4) and result.history["kept"].sum() == 1
    if result.checkpoint.meta.epoch == 4:
        swa_state = average.swa.module.state_dict()
        assert all(torch.equal(t, swa_state[n].cpu()) for n, t in result.checkpoint.state_dict.items())
    with pytest.raises(ValueError, match="early stopping"):
        TrainConfig(averaging="swa", early_stopping_patience=2)
    with pytest.raises(ValueError, match="unknown weight averaging 'polyak'"):
        TrainConfig(averaging="polyak")


def test_cpu_bf16_without_native_support_warns_and_trains_in_float32(monkeypatch):
    import cxr.train.loop as loop

    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16"):
        assert loop.amp_settings(TrainConfig(cpu_bf16=True), torch.device("cpu"))[0] is False
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: True)
    assert loop.amp_settings(TrainConfig(cpu_bf16=True), torch.device("cpu")) == (True, torch.bfloat16)
    assert loop.amp_settings(TrainConfig(), torch.device("cpu"))[0] is False
