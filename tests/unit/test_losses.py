"""Masked BCE, pos_weight BCE and focal loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr.train.losses import FocalLoss, MaskedBCELoss, create_loss, pos_weight_from_labels

LOGITS = torch.tensor([[2.0, -1.0], [0.5, 3.0], [-2.0, 0.0]])
TARGETS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
MASK = torch.tensor([[True, True], [True, False], [True, True]])


def test_bce_without_mask_is_torch_bce():
    expected = F.binary_cross_entropy_with_logits(LOGITS, TARGETS)
    torch.testing.assert_close(MaskedBCELoss()(LOGITS, TARGETS), expected)


def test_masked_entries_do_not_count():
    flipped = TARGETS.clone()
    flipped[1, 1] = 0.0
    loss = MaskedBCELoss()
    torch.testing.assert_close(loss(LOGITS, TARGETS, MASK), loss(LOGITS, flipped, MASK))
    full = F.binary_cross_entropy_with_logits(LOGITS, TARGETS, reduction="none")
    torch.testing.assert_close(loss(LOGITS, TARGETS, MASK), full[MASK].mean())


def test_pos_weight_counts_known_labels_only():
    labels = np.array([[1, 0], [0, 1], [0, 1], [0, 0]], np.float32)
    mask = np.array([[1, 1], [1, 0], [1, 1], [1, 1]], bool)
    torch.testing.assert_close(pos_weight_from_labels(labels, mask), torch.tensor([3.0, 2.0]))
    loss = create_loss("pos_weight_bce", labels, mask)
    torch.testing.assert_close(loss.pos_weight, torch.tensor([3.0, 2.0]))


def test_focal_with_gamma_zero_and_no_alpha_is_bce():
    torch.testing.assert_close(FocalLoss(alpha=None, gamma=0.0)(LOGITS, TARGETS, MASK),
                               MaskedBCELoss()(LOGITS, TARGETS, MASK))


def test_focal_down_weights_easy_examples():
    easy, hard = torch.tensor([[4.0]]), torch.tensor([[-1.0]])
    target = torch.ones(1, 1)
    ratio_focal = FocalLoss(alpha=None)(easy, target) / FocalLoss(alpha=None)(hard, target)
    ratio_bce = MaskedBCELoss()(easy, target) / MaskedBCELoss()(hard, target)
    assert ratio_focal < ratio_bce / 10


def test_label_smoothing_moves_targets_toward_half():
    loss = MaskedBCELoss(label_smoothing=0.2)
    expected = F.binary_cross_entropy_with_logits(LOGITS, TARGETS * 0.8 + 0.1)
    torch.testing.assert_close(loss(LOGITS, TARGETS), expected)


def test_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1)
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("hinge", np.zeros((1, 1)), np.ones((1, 1), bool))
