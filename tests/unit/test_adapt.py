"""AdaBN on real torch models: statistics equal the target batch's, weights stay, no-BN warns."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from cxr.adapt.batchnorm import adabn_checkpoint, adapt_batchnorm
from cxr.runtime import to_input
from tests.helpers import random_checkpoint


def test_first_batchnorm_holds_the_average_of_the_target_batches_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.BatchNorm2d(2))
    images = np.random.default_rng(0).integers(0, 256, (10, 16, 16), dtype=np.uint8)
    momentum = model[1].momentum
    assert adapt_batchnorm(model, images, 0.5, 0.25, batch_size=4) == 2  # batches of 4, 3, 3
    with torch.no_grad():
        features = [model[0](to_input(b, 0.5, 0.25, torch.device("cpu"))) for b in (images[:4], images[4:7], images[7:])]
    expected_mean = torch.stack([f.mean((0, 2, 3)) for f in features]).mean(0)
    expected_var = torch.stack([f.transpose(0, 1).flatten(1).var(1) for f in features]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var, expected_var, rtol=1e-4, atol=1e-6)
    assert model[1].momentum == momentum and not model.training


def test_checkpoint_keeps_its_weights_and_changes_only_running_statistics():
    checkpoint = random_checkpoint(image_size=32)
    images = np.random.default_rng(1).integers(0, 256, (12, 32, 32), dtype=np.uint8)
    adapted = adabn_checkpoint(checkpoint, images, batch_size=6)
    changed = {name for name, tensor in adapted.state_dict.items()
               if not torch.equal(tensor, checkpoint.state_dict[name])}
    assert changed and all(name.endswith(("running_mean", "running_var", "num_batches_tracked")) for name in changed)
    assert adapted.meta == checkpoint.meta


def test_a_model_without_batchnorm_is_left_alone_with_a_warning():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="no BatchNorm"):
        assert adapt_batchnorm(model, np.zeros((4, 8, 8), np.uint8), 0.5, 0.25) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def shifted(part, gain: float = 0.45, offset: float = 110.0):
    """``part`` as another site would take it: a flatter, brighter exposure of the same images."""
    return replace(part, images=np.clip(part.images * gain + offset, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def trained(synthetic_split):
    from cxr.models.classifier import ModelConfig
    from cxr.train.config import TrainConfig
    from cxr.train.loop import fit

    train, val = synthetic_split
    cfg = TrainConfig(epochs=4, batch_size=16, lr=3e-3, num_threads=2)
    return fit(train, val, ModelConfig(backbone="resnet10t"), cfg, progress=False).checkpoint


def auc_of(checkpoint, part) -> float:
    from cxr.infer.predict import predict_proba
    from cxr.metrics.classification import mean_auc

    probs = predict_proba(checkpoint.build_model(), part.images, checkpoint.meta.mean, checkpoint.meta.std, device="cpu")
    return mean_auc(part.labels, probs, part.mask)


def test_adabn_recovers_auc_on_a_noisier_site(trained, tmp_path):
    from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
    from cxr.data.sources import read_class_folders
    from tests.helpers import write_class_tree

    tree = write_class_tree(tmp_path / "site", n_per_class=60, size=48, seed=5)
    site = preprocess_imageset(read_class_folders(tree, "NORMAL", r"^(patient\w\d+)"), PreprocessConfig(image_size=32),
                               progress=False)
    rng = np.random.default_rng(0)
    gains = []
    for std in (20, 40, 60):  # a noisier detector: activations drift, BatchNorm statistics follow them
        noisy = replace(site, images=np.clip(site.images + rng.normal(0, std, site.images.shape), 0, 255).astype(np.uint8))
        gains.append(auc_of(adabn_checkpoint(trained, noisy.images), noisy) - auc_of(trained, noisy))
    assert auc_of(trained, site) > 0.9
    assert min(gains) > 0 and np.mean(gains) > 0.015, gains


def test_pseudo_labels_are_confident_predictions_and_mask_the_rest():
    from cxr.adapt.selftrain import pseudo_labels, pseudo_labelled

    probs = np.array([[0.95, 0.5], [0.05, 0.92], [0.6, 0.4]], np.float32)
    labels, mask = pseudo_labels(probs, 0.9)
    np.testing.assert_array_equal(mask, [[True, False], [True, True], [False, False]])
    np.testing.assert_array_equal(labels, [[1, 0], [0, 1], [0, 0]])
    kept = pseudo_labelled(np.zeros((3, 4, 4), np.uint8), labels, mask, ("a", "b"))
    assert len(kept) == 2 and set(kept.manifest["split"]) == {"train"}
    assert kept.ids == ["target-0", "target-1"]


def test_self_training_never_reads_target_labels(trained, synthetic_split, tmp_path):
    from cxr.adapt.selftrain import SelfTrainConfig, joined
    from cxr.adapt.target import AdaptConfig, adapt_to_target, unlabelled
    from cxr.train.config import TrainConfig

    train, val = synthetic_split
    images = joined(train, val)
    site = shifted(val, gain=0.8, offset=30)
    flipped = replace(site, labels=1 - site.labels)  # labels that would change any result that read them
    cfg = AdaptConfig(self_training=SelfTrainConfig(rounds=1, threshold=0.51, epochs=1))
    train_cfg = TrainConfig(epochs=1, batch_size=16, lr=3e-3, num_threads=2)
    a, log_a = adapt_to_target(trained, images, site, cfg, train_cfg, progress=False)
    b, log_b = adapt_to_target(trained, images, unlabelled(flipped), cfg, train_cfg, progress=False)
    for name, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[name]), name
    assert a.meta.adaptation == b.meta.adaptation
    assert a.meta.adaptation["methods"] == ["self_training", "adabn"] and a.meta.adaptation["target_images"] == len(site)
    row = log_a.iloc[0]
    assert row["threshold"] == 0.51 and 0 < row["target_share_used"] <= 1 and 0 < row["label_share_used"] <= 1
    assert log_a.equals(log_b)
    assert any(not torch.equal(t, trained.state_dict[k]) for k, t in a.state_dict.items() if "running" not in k)


def test_the_target_hash_ignores_labels_and_follows_pixels(synthetic_split):
    from cxr.adapt.target import unlabelled

    _, val = synthetic_split
    assert unlabelled(val).content_hash() == unlabelled(replace(val, labels=1 - val.labels)).content_hash()
    assert unlabelled(val).content_hash() != unlabelled(shifted(val)).content_hash()


def test_adapt_target_must_name_a_set_of_the_run():
    from cxr.adapt.target import AdaptConfig, check_adapt_target

    check_adapt_target(AdaptConfig(), has_test=True, external_names=[], has_ssl=False)
    check_adapt_target(AdaptConfig(target="site_b"), has_test=False, external_names=["site_b"], has_ssl=False)
    with pytest.raises(ValueError, match=r"parameters.adapt.target: .test. is a set.*set test_data"):
        check_adapt_target(AdaptConfig(), has_test=False, external_names=["site_b"], has_ssl=False)
    with pytest.raises(ValueError, match="parameters.ssl is not set"):
        check_adapt_target(AdaptConfig(ssl=True), has_test=True, external_names=[], has_ssl=False)


def test_domain_adaptive_ssl_pool_appends_target_images_as_self_pairs():
    from cxr.ssl.pretrain import with_target

    train, target = np.zeros((5, 4, 4), np.uint8), np.ones((3, 4, 4), np.uint8)
    pool, pairs = with_target(train, target, np.array([[0, 1], [1, 0], [4, 3]]))
    assert pool.shape == (8, 4, 4) and (pool[5:] == 1).all()
    np.testing.assert_array_equal(pairs[3:], [[5, 5], [6, 6], [7, 7]])
    assert with_target(train, target, None)[1] is None
