"""Real-data quality: the training pipeline on 300 Kermany images (64 px, resnet10t, 4 epochs)
must rank a fixed held-out set of 200 other patients' images far above chance.

Measured (seeds 0, 1, 2 of this recipe): held-out AUC 0.967, 0.975, 0.977. A model that learnt
nothing stays far below the floor: the same recipe on shuffled labels scored 0.54, 0.53 and
0.65, with lr 1e-9 (random weights) 0.47, and 3 epochs at lr 1e-3 on shuffled labels 0.19.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.pipeline.conftest import FAST_INTERVALS, output, run_and_fetch, use_stack_tracking, write_yaml

pytestmark = pytest.mark.slow

PATIENT = r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)"
N_TRAIN, N_HELD_OUT, HELD_OUT_AUC_FLOOR = 150, 100, 0.90


def patient(path: Path) -> str:
    return re.match(PATIENT, path.name).group(1)


def draw_images(train_dir: Path) -> dict[str, list[Path]]:
    """Per class, ``N_TRAIN`` images drawn with a fixed seed, then ``N_HELD_OUT`` of other patients."""
    drawn: dict[str, list[Path]] = {"held_out_normal": [], "held_out_pneumonia": []}
    for name in ("NORMAL", "PNEUMONIA"):
        files = sorted((train_dir / name).iterdir())
        files = [files[i] for i in np.random.default_rng(7).permutation(len(files))]
        seen = {patient(p) for p in files[:N_TRAIN]}
        drawn[name] = files[:N_TRAIN]
        drawn[f"held_out_{name.lower()}"] = [p for p in files[N_TRAIN:] if patient(p) not in seen][:N_HELD_OUT]
    return drawn


@pytest.fixture(scope="module")
def quality_run(real_data_dir: Path, tmp_path_factory) -> tuple:
    """One training run on the drawn images (linked, not copied) and the held-out files with labels."""
    folder = tmp_path_factory.mktemp("quality")
    drawn = draw_images(real_data_dir / "kermany-pneumonia-224" / "train")
    for name in ("NORMAL", "PNEUMONIA"):
        (folder / "train" / name).mkdir(parents=True)
        for path in drawn[name]:
            (folder / "train" / name / path.name).symlink_to(path)
    config = write_yaml(folder / "quality.yaml", {"parameters": {**FAST_INTERVALS,
        "data": {"source": "folders", "path": str(folder / "train"), "negative_class": "NORMAL",
                 "patient_id_pattern": PATIENT},
        "split": {"val_fraction": 0.2, "seed": 0}, "preprocess": {"image_size": 64},
        "model": {"backbone": "resnet10t"}, "train": {"epochs": 4, "batch_size": 32, "lr": 3e-3},
        "tta_views": ["original"], "registered_model_name": "cxr-quality-test"}})
    held_out = pd.DataFrame({"path": [str(p) for p in drawn["held_out_normal"] + drawn["held_out_pneumonia"]],
                             "pneumonia": [0] * N_HELD_OUT + [1] * N_HELD_OUT})
    return run_and_fetch("train", config, "quality"), held_out


def test_held_out_patients_are_ranked_far_above_chance(quality_run):
    import mlflow

    run, held_out = quality_run
    assert len(held_out) == 2 * N_HELD_OUT
    version = output(run, "register_model", "model_version")
    use_stack_tracking()
    served = mlflow.pyfunc.load_model(f"models:/cxr-quality-test/{version}").predict(held_out[["path"]])
    auc = roc_auc_score(held_out["pneumonia"], served["pneumonia"])
    assert auc >= HELD_OUT_AUC_FLOOR, f"held-out AUC {auc:.4f} below the floor {HELD_OUT_AUC_FLOOR}"

