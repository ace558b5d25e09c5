"""Cache keys follow code: a code edit re-runs the steps that import it, and only those; a
comment or docstring edit re-runs nothing.

Runs the pipeline (with SSL, so the expensive pretraining branch is in the DAG) in a copy of
the repository, so the real tree is never edited, in a subprocess per run; edits the copy
between runs.
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

from tests.conftest import REPO_ROOT
from tests.helpers import write_class_tree
from tests.pipeline.conftest import FAST_INTERVALS

pytestmark = pytest.mark.slow

RUN_AND_REPORT = """
import json, sys
from pipelines import runner as cli
from zenml.client import Client
result = cli.train(sys.argv[1], sys.argv[2])
steps = Client().get_pipeline_run(result.id).steps
print("STATUSES=" + json.dumps({name: str(s.status.value) for name, s in steps.items()}))
"""
SSL_BRANCH = {"handcrafted_features", "nn_pairs", "ssl_pretrain", "ssl_probe"}


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
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("STATUSES="))
    return json.loads(line.removeprefix("STATUSES="))


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def ran(statuses: dict[str, str]) -> set[str]:
    return {name for name, status in statuses.items() if status == "completed"}


@pytest.fixture(scope="module")
def edited_runs(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Statuses of a fresh run, then of a run after each edit of the repository copy."""
    tmp = tmp_path_factory.mktemp("edits")
    repo = copy_repo(tmp / "repo")
    data = write_class_tree(tmp / "data", n_per_class=16, size=32)
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump({"parameters": {**FAST_INTERVALS,
        "data": {"source": "folders", "path": str(data), "negative_class": "NORMAL",
                 "patient_id_pattern": r"^(patient\w\d+)"},
        "split": {"val_fraction": 0.25},
        "preprocess": {"image_size": 32},
        "model": {"backbone": "resnet10t"},
        "train": {"epochs": 1, "batch_size": 8},
        "ssl": {"method": "simsiam", "positives": "nn_pairs", "epochs": 1, "batch_size": 8,
                "hidden_dim": 32, "out_dim": 16},
        "tta_views": ["original"],
        "registered_model_name": "cxr-edit-test",
    }}))
    env = {**os.environ, "ZENML_CONFIG_PATH": str(tmp / "zen"), "ZENML_REPOSITORY_PATH": str(tmp / "zenrepo"),
           "PYTHONPATH": str(repo)}
    (tmp / "zenrepo").mkdir()
    runs = {"fresh": run_pipeline(repo, config, "fresh", env)}
    losses, finetune_step = repo / "cxr" / "train" / "losses.py", repo / "steps" / "train" / "finetune.py"
    edit(losses, '"""Mean of ``values`` where', '"""Edited docstring. Mean of ``values`` where')
    edit(losses, "    if mask is None:\n", "    # an edited comment\n    if mask is None:\n")
    edit(finetune_step, "    run_fit = fit_multi_node if", "    # a new comment in the step itself\n    run_fit = fit_multi_node if")
    runs["comments"] = run_pipeline(repo, config, "comments", env)
    edit(losses, "    return values.mean()\n", "    return values.sum() / values.numel()\n")
    runs["loss_code"] = run_pipeline(repo, config, "loss-code", env)
    clahe = repo / "cxr" / "features" / "clahe.py"
    clahe.write_text(clahe.read_text() + "\n\nEDITED = True\n")
    runs["clahe_code"] = run_pipeline(repo, config, "clahe-code", env)
    return runs


def test_fresh_run_executes_every_step(edited_runs):
    assert ran(edited_runs["fresh"]) == set(edited_runs["fresh"]) >= SSL_BRANCH | {"finetune"}


def test_comment_and_docstring_edits_keep_every_step_cached(edited_runs):
    statuses = edited_runs["comments"]
    # ingest always hashes the files; model_card is never cached (aliases move)
    assert ran(statuses) <= {"ingest", "model_card"}, f"re-ran {sorted(ran(statuses))}"


def test_a_loss_code_edit_reruns_finetune_but_not_ssl_or_features(edited_runs):
    statuses = edited_runs["loss_code"]
    assert {s: statuses[s] for s in SSL_BRANCH | {"split_dataset", "preprocess_images"}} == dict.fromkeys(
        SSL_BRANCH | {"split_dataset", "preprocess_images"}, "cached")
    assert statuses["finetune"] == statuses["evaluate"] == "completed"
    # the edit computes the same mean, so the re-trained checkpoint is bit-identical (CPU is
    # deterministic) and its content hash keeps the steps that take only it cached
    assert statuses["tta_predict_val"] == statuses["register_model"] == "cached"


def test_a_clahe_code_edit_reruns_preprocessing_and_identical_images_keep_training_cached(edited_runs):
    statuses = edited_runs["clahe_code"]
    assert statuses["split_dataset"] == "cached" and statuses["preprocess_images"] == "completed"
    assert statuses["finetune"] == statuses["ssl_pretrain"] == "cached", "identical images (content hash)"
