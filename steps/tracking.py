"""MLflow helpers shared by steps that log configs and per-epoch histories."""

from __future__ import annotations

from typing import Callable

import mlflow


def flatten(prefix: str, config: dict) -> dict:
    """Nested config dict to flat ``prefix.key`` params for MLflow."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}.{key}"
        out.update(flatten(name, value) if isinstance(value, dict) else {name: value})
    return out


def epoch_logger(prefix: str = "") -> Callable[[dict], None]:
    """An ``on_epoch`` callback that logs a history row as MLflow metrics at step=epoch."""
    def log(row: dict) -> None:
        mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
    return log
