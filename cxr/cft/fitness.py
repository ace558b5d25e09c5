"""Fitness of a whole population of one category's logistic regressions at once.

Scores are one (N, D) x (D, P) matrix product. AUC and average precision then come either
from one sort of the (P, N) score matrix (exact; equal to scikit-learn's ``roc_auc_score`` /
``average_precision_score`` when scores do not tie), or, with ``bins``, from one
``bincount`` of each individual's scores quantised to ``bins`` levels: exactly scikit-learn's
value on the quantised scores (ties handled as it does), and several times faster than the
sort at 100k rows, which is what keeps a GA generation in milliseconds.
"""

from __future__ import annotations

import torch

from cxr.registry import Registry

FITNESSES = Registry("CFT fitness")
register_fitness = FITNESSES.register
FitnessName = FITNESSES.choice()


def population_logits(x: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(P, N) logits of P linear models (``weights`` (P, D), ``bias`` (P,)) on ``x`` (N, D)."""
    return torch.addmm(bias[:, None], weights, x.T)


def binned_counts(logits: torch.Tensor, y: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(negatives, positives), each (P, bins): label counts per score level, lowest level first."""
    lo, hi = logits.aminmax(dim=1, keepdim=True)
    scaled = (logits - lo).mul_((bins - 1) / (hi - lo).clamp_min(1e-12)).add_(0.5)
    offsets = torch.arange(len(logits), device=logits.device)[:, None] * (2 * bins) + bins * y.long()
    counts = torch.bincount(scaled.long().add_(offsets).flatten(), minlength=2 * bins * len(logits))
    counts = counts.view(len(logits), 2, bins).to(logits.dtype)
    return counts[:, 0], counts[:, 1]


@register_fitness("auc")
def population_auc(logits: torch.Tensor, y: torch.Tensor, bins: int | None = None) -> torch.Tensor:
    """(P,) ROC AUC of each row of ``logits`` against binary ``y`` (N,) via the rank-sum."""
    if bins:
        neg, pos = binned_counts(logits, y, bins)
        below = neg.cumsum(1) - neg
        return (pos * (below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1))
    ranks = torch.empty_like(logits)
    order = logits.argsort(dim=1)
    positions = torch.arange(1, logits.shape[1] + 1, dtype=logits.dtype, device=logits.device)
    ranks.scatter_(1, order, positions.expand_as(order))
    n_pos = y.sum()
    n_neg = len(y) - n_pos
    return ((ranks * y).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@register_fitness("average_precision")
def population_average_precision(logits: torch.Tensor, y: torch.Tensor, bins: int | None = None) -> torch.Tensor:
    """(P,) average precision (mean precision at each positive, scores descending)."""
    if bins:
        neg, pos = (c.flip(1) for c in binned_counts(logits, y, bins))
        true_pos = pos.cumsum(1)
        precision = true_pos / (true_pos + neg.cumsum(1)).clamp_min(1)
        return (precision * pos).sum(1) / pos.sum(1)
    order = logits.argsort(dim=1, descending=True)
    hits = y[order]
    precision = hits.cumsum(1) / torch.arange(1, logits.shape[1] + 1, dtype=logits.dtype, device=logits.device)
    return (precision * hits).sum(1) / y.sum()


@register_fitness("bce")
def population_neg_bce(logits: torch.Tensor, y: torch.Tensor, bins: int | None = None) -> torch.Tensor:
    """(P,) negative mean binary cross-entropy (higher is better); ``bins`` does not apply."""
    return -torch.nn.functional.binary_cross_entropy_with_logits(logits, y.expand_as(logits), reduction="none").mean(1)


def population_fitness(name: str, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                       bias: torch.Tensor, bins: int | None = None) -> torch.Tensor:
    """(P,) fitness ``name`` of every individual on the known rows ``x``, ``y``."""
    return FITNESSES.get(name)(population_logits(x, weights, bias), y, bins)
