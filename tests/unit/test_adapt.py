"""AdaBN on real torch models: statistics equal the target batch's, weights stay, no-BN warns."""

from __future__ import annotations

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
