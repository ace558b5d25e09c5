"""Category-wise Fine-Tuning (CFT): a genetic algorithm over each category's last-layer
logistic regression, fitted on known labels only and kept only where it is better on val.

Per category: a population around the trained (weights, bias), fitness-proportional
selection, uniform crossover, Gaussian mutation and elitism; the run stops after
``patience`` generations without a better val candidate. Written here rather than taken
from EvoTorch or pygad because the whole generation is one matrix product plus one sort
(``cxr.cft.fitness``); both libraries evaluate or copy per individual on this path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from cxr.progress import progress_bar

from cxr.cft.fitness import FitnessName, population_auc, population_fitness, population_logits
from cxr.runtime import resolve_device

Evaluator = Callable[[torch.Tensor], torch.Tensor]


class CFTConfig(BaseModel):
    """GA knobs (``parameters.cft`` in YAML)."""

    model_config = ConfigDict(extra="forbid")

    fitness: FitnessName = Field("average_precision", description="a registered fitness: average_precision (as in "
                                                                  "the CFT reference code), auc or bce")
    population: int = Field(32, ge=4)
    generations: int = Field(60, ge=1)
    patience: int = Field(10, ge=1, description="generations without a better val candidate before stopping")
    elite: int = Field(2, ge=1)
    init_scale: float = Field(0.1, gt=0, description="initial spread, relative to the std of the trained weights")
    mutation_rate: float = Field(0.1, gt=0, le=1, description="fraction of genes mutated per child")
    mutation_scale: float = Field(0.05, gt=0, description="mutation std, relative to the std of the trained weights")
    bins: int | None = Field(4096, ge=16, description="fitness on scores quantised to this many levels (fast); "
                                                       "None sorts exactly")
    min_known: int = Field(10, ge=2, description="categories with fewer known positives or negatives are skipped")
    seed: int = 0
    device: str = "auto"


@dataclass
class CategoryResult:
    """The kept (weights, bias) of one category and how it got there."""

    weights: torch.Tensor
    bias: float
    val_fitness_before: float
    val_fitness_after: float
    generations: int


def vectorised_evaluator(fitness: str, x: torch.Tensor, y: torch.Tensor, bins: int | None = None) -> Evaluator:
    """Fitness of a (P, D+1) population (weights then bias) on rows ``x`` with labels ``y``."""
    return lambda pop: population_fitness(fitness, x, y, pop[:, :-1], pop[:, -1], bins)


def select_parents(fitness: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` indices drawn with probability proportional to fitness (shifted to be positive)."""
    shifted = fitness - fitness.min()
    probs = shifted + 1e-12 if shifted.sum() > 0 else torch.ones_like(fitness)
    return torch.multinomial(probs / probs.sum(), n, replacement=True, generator=generator)


def next_generation(pop: torch.Tensor, fitness: torch.Tensor, cfg: CFTConfig, sigma: float,
                    generator: torch.Generator) -> torch.Tensor:
    """Elites copied, the rest bred by uniform crossover of two selected parents and mutated."""
    n_children = len(pop) - cfg.elite
    elites = pop[fitness.topk(cfg.elite).indices]
    mothers = pop[select_parents(fitness, n_children, generator)]
    fathers = pop[select_parents(fitness, n_children, generator)]
    genes = torch.rand(mothers.shape, generator=generator).to(pop.device) < 0.5
    children = torch.where(genes, mothers, fathers)
    mutate = torch.rand(children.shape, generator=generator).to(pop.device) < cfg.mutation_rate
    noise = torch.randn(children.shape, generator=generator).to(pop.device) * (cfg.mutation_scale * sigma)
    return torch.cat([elites, children + mutate * noise])


def evolve(genome: torch.Tensor, train_fitness: Evaluator, val_fitness: Evaluator, cfg: CFTConfig,
           generator: torch.Generator) -> CategoryResult:
    """Run the GA from ``genome`` (weights then bias); return the val-best candidate seen,
    which is ``genome`` itself unless something beat it on val."""
    sigma = float(genome[:-1].std()) + 1e-8
    pop = genome + torch.randn((cfg.population, len(genome)), generator=generator).to(genome.device) \
        * (cfg.init_scale * sigma)
    pop[0] = genome
    start = float(val_fitness(genome[None])[0])
    best, best_val, stale, generation = genome, start, 0, 0
    fit_train = train_fitness(pop)
    for generation in range(1, cfg.generations + 1):
        pop = next_generation(pop, fit_train, cfg, sigma, generator)
        fit_train, fit_val = train_fitness(pop), val_fitness(pop)
        top = int(fit_val.argmax())
        if float(fit_val[top]) > best_val:
            best, best_val, stale = pop[top].clone(), float(fit_val[top]), 0
        else:
            stale += 1
        if stale >= cfg.patience:
            break
    return CategoryResult(best[:-1].cpu(), float(best[-1]), start, best_val, generation)


def known_rows(x: torch.Tensor, labels: np.ndarray, mask: np.ndarray, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and float labels of the rows whose label ``j`` is known."""
    rows = torch.from_numpy(np.flatnonzero(mask[:, j])).to(x.device)
    return x[rows], torch.from_numpy(labels[:, j]).to(x.device)[rows].float()


def too_few(y: torch.Tensor, min_known: int) -> bool:
    """True when ``y`` has fewer than ``min_known`` positives or negatives."""
    positives = int(y.sum())
    return min(positives, len(y) - positives) < min_known


def category_finetune(train_x: np.ndarray, train_labels: np.ndarray, train_mask: np.ndarray,
                      val_x: np.ndarray, val_labels: np.ndarray, val_mask: np.ndarray,
                      weight: torch.Tensor, bias: torch.Tensor, label_names: list[str], cfg: CFTConfig,
                      progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, pd.DataFrame]:
    """CFT of every category of the last layer (``weight`` (L, D), ``bias`` (L,)).

    Returns the new weight and bias and one table row per category (val fitness and val
    AUC before/after, generations, seconds, or why it was skipped).
    """
    device = resolve_device(cfg.device)
    xt, xv = torch.from_numpy(train_x).float().to(device), torch.from_numpy(val_x).float().to(device)
    new_weight, new_bias = weight.detach().clone().float(), bias.detach().clone().float()
    generator = torch.Generator().manual_seed(cfg.seed)
    rows = []
    for j, name in enumerate(progress_bar(label_names, desc="cft", disable=not progress)):
        started = time.perf_counter()
        x_tr, y_tr = known_rows(xt, train_labels, train_mask, j)
        x_va, y_va = known_rows(xv, val_labels, val_mask, j)
        row = {"label": name, "train_known": len(y_tr), "val_known": len(y_va)}
        if too_few(y_tr, cfg.min_known) or too_few(y_va, 2):
            rows.append({**row, "skipped": "too few known positives or negatives"})
            continue
        genome = torch.cat([new_weight[j], new_bias[j:j + 1]]).to(device)
        result = evolve(genome, vectorised_evaluator(cfg.fitness, x_tr, y_tr, cfg.bins),
                        vectorised_evaluator(cfg.fitness, x_va, y_va, cfg.bins), cfg, generator)
        new_weight[j], new_bias[j] = result.weights, result.bias
        auc = lambda w, b: float(population_auc(population_logits(x_va, w[None].to(device),  # noqa: E731
                                                                  torch.tensor([b], device=device)), y_va)[0])
        rows.append({**row, "skipped": "", "val_fitness_before": result.val_fitness_before,
                     "val_fitness_after": result.val_fitness_after,
                     "val_auc_before": auc(weight[j].float(), float(bias[j])),
                     "val_auc_after": auc(result.weights, result.bias),
                     "generations": result.generations, "seconds": time.perf_counter() - started})
    return new_weight, new_bias, pd.DataFrame(rows)
