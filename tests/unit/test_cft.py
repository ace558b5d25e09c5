"""CFT: vectorised population fitness, the genetic algorithm, and last-layer surgery."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from cxr.cft.fitness import population_fitness, population_logits
from cxr.cft.genetic import CFTConfig, category_finetune, evolve, vectorised_evaluator
from cxr.cft.head import last_layer, penultimate_features, with_last_layer
from cxr.models.checkpoint import Checkpoint, CheckpointMeta
from cxr.models.classifier import Classifier, ModelConfig

RNG = np.random.default_rng(0)


def toy_problem(n: int = 600, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features where only the first two dimensions carry the (noisy) label."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] + rng.normal(scale=0.7, size=n) > 0).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y)


class TestFitness:
    def test_exact_fitness_equals_scikit_learn_per_individual(self):
        x, y = toy_problem()
        weights, bias = torch.randn(6, 8), torch.randn(6)
        logits = population_logits(x, weights, bias).numpy()
        for name, reference in (("auc", roc_auc_score), ("average_precision", average_precision_score)):
            got = population_fitness(name, x, y, weights, bias).numpy()
            np.testing.assert_allclose(got, [reference(y, row) for row in logits], rtol=1e-5)
        bce = population_fitness("bce", x, y, weights, bias).numpy()
        np.testing.assert_allclose(-bce, [log_loss(y, 1 / (1 + np.exp(-row))) for row in logits], rtol=1e-4)

    def test_binned_fitness_is_scikit_learn_on_quantised_scores(self):
        x, y = toy_problem()
        weights, bias = torch.randn(4, 8), torch.randn(4)
        logits = population_logits(x, weights, bias).numpy()
        lo, hi = logits.min(1, keepdims=True), logits.max(1, keepdims=True)
        levels = np.round((logits - lo) / (hi - lo) * 31)
        for name, reference in (("auc", roc_auc_score), ("average_precision", average_precision_score)):
            got = population_fitness(name, x, y, weights, bias, bins=32).numpy()
            np.testing.assert_allclose(got, [reference(y, row) for row in levels], rtol=1e-5)

    def test_unknown_fitness_is_refused(self):
        x, y = toy_problem(20)
        with pytest.raises(ValueError, match="unknown CFT fitness 'f1'"):
            population_fitness("f1", x, y, torch.zeros(2, 8), torch.zeros(2))


class TestGenetic:
    def test_improves_a_poor_start_and_evaluates_whole_populations(self):
        x, y = toy_problem(seed=1)
        xv, yv = toy_problem(seed=2)
        sizes = []
        train = vectorised_evaluator("auc", x, y)

        def counting(pop: torch.Tensor) -> torch.Tensor:
            sizes.append(len(pop))
            return train(pop)

        start = torch.cat([torch.tensor([0.3, 0.0]), torch.ones(6), torch.zeros(1)])
        cfg = CFTConfig(fitness="auc", population=16, generations=40, patience=40, init_scale=0.5, mutation_scale=0.3)
        result = evolve(start, counting, vectorised_evaluator("auc", xv, yv), cfg, torch.Generator().manual_seed(0))
        assert set(sizes) == {16}
        assert result.val_fitness_after > result.val_fitness_before + 0.1
        best = torch.cat([result.weights, torch.tensor([result.bias])])
        assert float(vectorised_evaluator("auc", xv, yv)(best[None])[0]) == pytest.approx(result.val_fitness_after)

    def test_never_worse_than_the_start_on_val(self):
        x, y = toy_problem(seed=3)
        start = torch.cat([torch.tensor([1.0, -1.0]), torch.zeros(6), torch.zeros(1)])
        cfg = CFTConfig(fitness="average_precision", population=8, generations=5, patience=2, init_scale=2.0)
        result = evolve(start, vectorised_evaluator("average_precision", x, y),
                        vectorised_evaluator("average_precision", x, y), cfg, torch.Generator().manual_seed(0))
        assert result.val_fitness_after >= result.val_fitness_before
        if result.val_fitness_after == result.val_fitness_before:
            assert torch.equal(result.weights, start[:-1])
        assert result.generations <= 5

    def test_category_finetune_uses_known_labels_and_skips_thin_categories(self):
        x, y = toy_problem(400, seed=4)
        labels = np.stack([y.numpy(), np.zeros(400, np.float32)], 1)
        labels[:3, 1] = 1
        mask = np.ones_like(labels, bool)
        mask[::2, 0] = False
        labels_noisy = labels.copy()
        labels_noisy[~mask] = 1 - labels_noisy[~mask]
        weight, bias = torch.zeros(2, 8), torch.zeros(2)
        weight[0, 0] = 0.1
        cfg = CFTConfig(fitness="auc", population=12, generations=10, patience=10, init_scale=1.0, min_known=5)
        new_w, new_b, table = category_finetune(x.numpy(), labels_noisy, mask, x.numpy(), labels, mask, weight, bias,
                                                ["signal", "rare"], cfg, progress=False)
        assert table.loc[0, "train_known"] == 200 and table.loc[0, "val_known"] == 200
        assert table.loc[1, "skipped"] and torch.equal(new_w[1], weight[1])
        assert table.loc[0, "val_auc_after"] >= table.loc[0, "val_auc_before"]


def test_penultimate_features_feed_the_last_layer():
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet10t", head="mlp", head_batch_norm=True)
    model = Classifier(cfg, 3).eval()
    meta = CheckpointMeta(model=cfg, image_size=32, label_names=["a", "b", "c"], mean=0.5, std=0.25)
    checkpoint = Checkpoint.from_model(model, meta)
    images = RNG.integers(0, 256, (5, 32, 32), dtype=np.uint8)
    features = penultimate_features(checkpoint, images, batch_size=2)
    weight, bias = last_layer(checkpoint)
    assert features.shape == (5, 512)
    with torch.inference_mode():
        x = (torch.from_numpy(images).float()[:, None] / 255 - 0.5) / 0.25
        expected = checkpoint.build_model()(x)
    np.testing.assert_allclose(features @ weight.numpy().T + bias.numpy(), expected.numpy(), atol=1e-4)
    updated = with_last_layer(checkpoint, weight * 2, bias - 1, {"val_auc": 0.9})
    with torch.inference_mode():
        doubled = updated.build_model()(x)
    np.testing.assert_allclose(doubled.numpy(), (features @ (2 * weight.numpy()).T + bias.numpy() - 1), atol=1e-4)
    assert updated.meta.val_metrics == {"val_auc": 0.9} and checkpoint.meta.val_metrics == {}
    with pytest.raises(ValueError, match="does not match"):
        with_last_layer(checkpoint, weight[:2], bias[:2])
