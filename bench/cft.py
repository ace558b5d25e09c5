"""CFT genetic algorithm speed: whole-population evaluation vs one individual at a time.

    python bench/cft.py [--rows 100000] [--dim 512] [--categories 3] [--generations 20]

On generated, cached-style penultimate features (``--rows`` x ``--dim`` float32, labels from
a planted linear rule plus noise, the "trained" weights a noisy copy of it), runs the same
GA per category twice for a fixed number of generations: with the vectorised fitness
(one matrix product + one bincount per generation) and with an evaluator that scores each
individual separately with scikit-learn, as a per-individual GA would. Then the default
config (early stopping) per category. One JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from cxr.cft.genetic import CFTConfig, category_finetune, evolve, vectorised_evaluator


def planted_rule(dim: int, categories: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(true weights, noisy 'trained' copy), each (categories, dim)."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(categories, dim)) / np.sqrt(dim)
    trained = truth + rng.normal(size=truth.shape) / np.sqrt(dim)
    return truth.astype(np.float32), trained.astype(np.float32)


def generated(rows: int, truth: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (rows, dim) and labels (rows, categories) from the planted rule plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, truth.shape[1])).astype(np.float32)
    logits = x @ truth.T + rng.normal(size=(rows, len(truth))) - 1.5
    return x, (logits > 0).astype(np.float32)


def one_at_a_time(x: torch.Tensor, y: torch.Tensor):
    """Per-individual evaluator: one matrix-vector product and one scikit-learn call each."""
    xs, ys = x.numpy(), y.numpy()
    return lambda pop: torch.tensor([average_precision_score(ys, xs @ g[:-1].numpy() + float(g[-1])) for g in pop])


def timed_ga(genome: torch.Tensor, train_eval, val_eval, cfg: CFTConfig) -> float:
    started = time.perf_counter()
    evolve(genome, train_eval, val_eval, cfg, torch.Generator().manual_seed(0))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--categories", type=int, default=3)
    parser.add_argument("--generations", type=int, default=20)
    args = parser.parse_args()
    truth, trained_np = planted_rule(args.dim, args.categories)
    trained = torch.from_numpy(trained_np)
    x, labels = generated(args.rows, truth, seed=1)
    xv, labels_v = generated(args.rows // 5, truth, seed=2)
    fixed = CFTConfig(generations=args.generations, patience=args.generations)
    xt, xvt = torch.from_numpy(x), torch.from_numpy(xv)
    for j in range(args.categories):
        genome = torch.cat([trained[j], torch.zeros(1)])
        y, yv = torch.from_numpy(labels[:, j]), torch.from_numpy(labels_v[:, j])
        val_eval = vectorised_evaluator(fixed.fitness, xvt, yv, fixed.bins)
        fast = timed_ga(genome, vectorised_evaluator(fixed.fitness, xt, y, fixed.bins), val_eval, fixed)
        slow = timed_ga(genome, one_at_a_time(xt, y), val_eval, fixed)
        print(json.dumps({"bench": "cft_speed", "category": j, "rows": args.rows, "dim": args.dim,
                          "population": fixed.population, "generations": args.generations,
                          "vectorised_s": round(fast, 3), "one_at_a_time_s": round(slow, 3),
                          "speedup": round(slow / fast, 1), "cores": os.cpu_count()}), flush=True)
    _, _, table = category_finetune(x, labels, np.ones_like(labels, bool), xv, labels_v, np.ones_like(labels_v, bool),
                                    trained, torch.zeros(args.categories), [f"c{j}" for j in range(args.categories)],
                                    CFTConfig(), progress=False)
    for row in table.itertuples():
        print(json.dumps({"bench": "cft_default", "category": row.label, "seconds": round(row.seconds, 3),
                          "generations": int(row.generations), "val_ap_before": round(row.val_fitness_before, 4),
                          "val_ap_after": round(row.val_fitness_after, 4), "val_auc_before": round(row.val_auc_before, 4),
                          "val_auc_after": round(row.val_auc_after, 4)}), flush=True)


if __name__ == "__main__":
    main()
