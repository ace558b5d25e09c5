"""The SSL branch through ZenML: it runs behind one switch, and fine-tune knobs never re-run it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers import write_class_tree
from tests.pipeline.conftest import FAST_INTERVALS

pytestmark = pytest.mark.slow

SSL_STEPS = {"handcrafted_features", "nn_pairs", "ssl_pretrain", "ssl_probe"}


def write_config(folder: Path, data: Path, lr: float) -> Path:
    path = folder / f"ssl-{lr}.yaml"
    path.write_text(yaml.safe_dump({"parameters": {**FAST_INTERVALS,
        "data": {"source": "folders", "path": str(data), "negative_class": "NORMAL",
                 "patient_id_pattern": r"^(patient\w\d+)"},
        "split": {"val_fraction": 0.25},
        "preprocess": {"image_size": 32},
        "model": {"backbone": "resnet10t", "freeze_backbone": True},
        "train": {"epochs": 1, "batch_size": 8, "lr": lr},
        "tta_views": ["original"],
        "registered_model_name": "cxr-ssl-test",
        "ssl": {"method": "simsiam", "positives": "nn_pairs", "epochs": 1, "batch_size": 8,
                "hidden_dim": 64, "out_dim": 32},
    }}))
    return path


def test_ssl_branch_runs_and_stays_cached_when_only_finetune_changes(tmp_path: Path):
    from zenml.client import Client

    from pipelines import runner as cli

    data = write_class_tree(tmp_path / "data", n_per_class=16, size=32)
    first = Client().get_pipeline_run(cli.train(str(write_config(tmp_path, data, 1e-3)), "ssl-first").id)
    assert {name: str(first.steps[name].status.value) for name in SSL_STEPS} == dict.fromkeys(SSL_STEPS, "completed")

    pairs = first.steps["nn_pairs"].outputs["pairs"][0].load()
    n_train = len(first.steps["preprocess_images"].outputs["decoded_images"][0].load().split("train"))
    assert pairs.shape == (n_train, 2) and (pairs[:, 0] != pairs[:, 1]).all()
    backbone = first.steps["ssl_pretrain"].outputs["ssl_backbone"][0].load()
    checkpoint = first.steps["finetune"].outputs["checkpoint"][0].load()
    assert backbone.meta.positives == "nn_pairs"
    for name, tensor in backbone.state_dict.items():
        assert np.array_equal(checkpoint.state_dict[f"backbone.{name}"].numpy(), tensor.numpy()), name
    probe = first.steps["ssl_probe"].outputs["ssl_probe_metrics"][0].load()
    assert 0 <= probe["linear_probe_auc"] <= 1

    second = Client().get_pipeline_run(cli.train(str(write_config(tmp_path, data, 3e-3)), "ssl-second").id)
    status = {name: str(step.status.value) for name, step in second.steps.items()}
    assert {name: status[name] for name in SSL_STEPS} == dict.fromkeys(SSL_STEPS, "cached")
    assert status["finetune"] == "completed"
