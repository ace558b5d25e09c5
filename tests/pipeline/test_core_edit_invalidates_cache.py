"""Editing a core function re-runs the steps that call it, and only those.

Runs the pipeline in a copy of the repository (so the real tree is never edited) in a
subprocess, edits a core module in the copy, and runs again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, write_class_tree

pytestmark = pytest.mark.slow

RUN_AND_REPORT = """
import json, sys
from pipelines import runner as cli
from zenml.client import Client
result = cli.train(sys.argv[1], sys.argv[2])
steps = Client().get_pipeline_run(result.id).steps
print("STATUSES=" + json.dumps({name: str(s.status.value) for name, s in steps.items()}))
"""


def copy_repo(target: Path) -> Path:
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        if (REPO_ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, target / name)
    return target


def run_pipeline(repo: Path, config: Path, name: str, env: dict) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", RUN_AND_REPORT, str(config), name], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("STATUSES="))
    return json.loads(line.removeprefix("STATUSES="))


def append_to(path: Path, code: str) -> None:
    path.write_text(path.read_text() + code)


def test_editing_core_reruns_dependent_steps(tmp_path: Path):
    repo = copy_repo(tmp_path / "repo")
    data = write_class_tree(tmp_path / "data", n_per_class=16, size=32)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"parameters": {
        "data": {"source": "folders", "path": str(data), "negative_class": "NORMAL",
                 "patient_id_pattern": r"^(patient\w\d+)"},
        "split": {"val_fraction": 0.25},
        "preprocess": {"image_size": 32},
        "model": {"backbone": "resnet10t"},
        "train": {"epochs": 1, "batch_size": 8},
        "tta_views": ["original"],
        "registered_model_name": "cxr-edit-test",
    }}))
    env = {**os.environ, "ZENML_CONFIG_PATH": str(tmp_path / "zen"),
           "ZENML_REPOSITORY_PATH": str(tmp_path / "zenrepo"), "PYTHONPATH": str(repo)}
    (tmp_path / "zenrepo").mkdir()

    first = run_pipeline(repo, config, "fresh", env)
    assert first["finetune"] == "completed"

    append_to(repo / "cxr" / "train" / "losses.py",
              "\n\ndef _edited() -> int:\n    return 1\n")
    after_loss_edit = run_pipeline(repo, config, "loss-edited", env)
    assert after_loss_edit["split_dataset"] == "cached"
    assert after_loss_edit["preprocess_images"] == "cached"
    assert after_loss_edit["finetune"] == "completed"

    append_to(repo / "cxr" / "features" / "clahe.py", "\n\nEDITED = True\n")
    after_clahe_edit = run_pipeline(repo, config, "clahe-edited", env)
    assert after_clahe_edit["split_dataset"] == "cached"
    assert after_clahe_edit["preprocess_images"] == "completed"
    assert after_clahe_edit["finetune"] == "cached", "identical images (content hash) keep training cached"
