"""Faults in the middle of a training run: SIGKILL during preprocessing, fine-tuning, registration
and promotion; a full disk while an artifact is saved; the MLflow database locked by another
writer during promotion; two runs promoting at the same moment. After each: the champion
registered before still serves, every registered version loads with its artifacts, no cached
step points at missing artifacts, and the next run of the same config completes (a killed
fine-tune resumes from its last saved epoch)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import write_class_tree
from tests.pipeline.conftest import (
    FAST_INTERVALS, folders_source, output, run_and_fetch, statuses, use_stack_tracking, write_yaml,
)

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = "cxr-fault-test"


def config(path: Path, data: Path, size: int = 32, epochs: int = 2, samples: int | None = None,
           lr: float = 1e-2, registry_wait_s: float = 600) -> Path:
    """A 32 px resnet10t training config registering to NAME with promotion; a run whose model must
    differ from the others' (so that no step is cached) gets its own ``lr``."""
    return write_yaml(path, {"model": {"name": NAME}, "parameters": {**FAST_INTERVALS,
        "data": folders_source(data), "split": {"val_fraction": 0.25},
        "preprocess": {"image_size": size, "clahe": False}, "model": {"backbone": "resnet10t"},
        "train": {"epochs": epochs, "batch_size": 8, "lr": lr, "samples_per_epoch": samples},
        "tta_views": ["original"], "registered_model_name": NAME, "drift": None, "audit": None, "guardrails": None,
        "promotion": {"n_bootstrap": 200, "registry_wait_s": registry_wait_s}}})


@pytest.fixture(scope="module")
def champion(tmp_path_factory) -> dict:
    """A first run whose version 1 is the champion, and the generated images it trained on."""
    root = tmp_path_factory.mktemp("faults")
    tree = write_class_tree(root / "tree", n_per_class=24, size=48)
    run = run_and_fetch("train", config(root / "first.yaml", tree), "faults-first")
    assert output(run, "promote_model", "promotion")["alias"] == "champion"
    return {"root": root, "tree": tree, "probe": sorted((tree / "PNEUMONIA").iterdir())[:4]}


def launch(argv: list[str], log: Path | None) -> subprocess.Popen:
    """``python ARGV`` from the repository root, its output in ``log`` (or discarded)."""
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, *argv], cwd=REPO_ROOT, env=dict(os.environ), stdout=out,
                            stderr=subprocess.STDOUT)


def spawn(config_path: Path, run_name: str, log: Path | None = None) -> subprocess.Popen:
    return launch(["run.py", "train", "-c", str(config_path), "--run-name", run_name], log)


def paused_run(target: str, config_path: Path, run_name: str, ready: Path, release: Path | None = None,
               log: Path | None = None) -> subprocess.Popen:
    """A training run that stops at the first call of ``target`` (see faulty_run), until ``release`` exists."""
    return launch(["-m", "tests.reliability.faulty_run", target, str(ready), "-", str(release or "-"), "train", "-c",
                   str(config_path), "--run-name", run_name], log)


def step_status(run_name: str, step: str) -> str | None:
    from zenml.client import Client

    try:
        steps = Client().get_pipeline_run(run_name).steps
    except KeyError:
        return None
    return str(steps[step].status.value) if step in steps else None


def wait_until(process: subprocess.Popen, ready, log: Path | None = None, timeout: float = 600) -> None:
    """Wait until ``ready()`` holds while ``process`` runs; fails (with its log) if it ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, log.read_text() if log else "the run ended before the fault point"
        assert time.monotonic() < deadline, log.read_text() if log else "the fault point was never reached"
        time.sleep(0.05)


def kill_when(process: subprocess.Popen, ready, timeout: float = 600) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` holds."""
    wait_until(process, ready, timeout=timeout)
    process.send_signal(signal.SIGKILL)
    process.wait()


def registry():
    import mlflow

    use_stack_tracking()
    return mlflow.MlflowClient()


def champion_after(run, champion_before: int) -> int:
    """The champion once ``run`` has promoted: its own version, or the one before when it did not win."""
    promoted = output(run, "promote_model", "promotion")["alias"] == "champion"
    return int(output(run, "register_model", "model_version")) if promoted else champion_before


def assert_nothing_lost(champion: dict, champion_version: int = 1) -> None:
    """The champion serves; every version loads; no cached or completed step lacks its artifacts."""
    import mlflow
    from zenml.client import Client

    client = registry()
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == champion_version
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(
        pd.DataFrame({"id": [p.stem for p in champion["probe"]], "path": [str(p) for p in champion["probe"]]}))
    assert np.isfinite(served["pneumonia"]).all() and served["pneumonia"].between(0, 1).all()
    for version in client.search_model_versions(f"name='{NAME}'"):
        mlflow.pyfunc.load_model(f"models:/{NAME}/{version.version}")
    for step in Client().list_run_steps(size=1000).items:
        if str(step.status.value) in ("completed", "cached"):
            for artifacts in step.outputs.values():
                for artifact in artifacts:
                    assert Path(artifact.uri).exists(), f"{step.name} points at missing {artifact.uri}"


def resume_folders() -> list[Path]:
    from zenml.client import Client

    return list((Path(Client().active_stack.artifact_store.path) / "resume").glob("finetune-*/state.json"))


def test_sigkill_during_finetune_then_the_next_run_resumes_from_the_saved_epoch(champion, capfd):
    import json

    path = config(champion["root"] / "finetune.yaml", champion["tree"], epochs=3, samples=600)
    kill_when(spawn(path, "faults-finetune-killed"), lambda: any(
        json.loads(p.read_text()).get("epoch", 0) >= 1 for p in resume_folders()))
    (state,) = resume_folders()
    saved_epoch = json.loads(state.read_text())["epoch"]
    assert step_status("faults-finetune-killed", "finetune") == "running"  # orphaned by the kill
    before = int(registry().get_model_version_by_alias(NAME, "champion").version)
    assert_nothing_lost(champion, before)
    capfd.readouterr()
    run = run_and_fetch("train", path, "faults-finetune-resumed")
    assert f"resuming training from epoch {saved_epoch + 1} of 3" in capfd.readouterr().out
    assert output(run, "finetune", "history")["epoch"].tolist() == [1, 2, 3]
    assert resume_folders() == []
    assert_nothing_lost(champion, champion_after(run, before))


def test_sigkill_during_preprocessing_then_during_tta_loses_nothing_and_the_next_run_completes(champion):
    path = config(champion["root"] / "preprocess.yaml", champion["tree"], size=40)
    before = int(registry().get_model_version_by_alias(NAME, "champion").version)
    kill_when(spawn(path, "faults-preprocess-killed"),
              lambda: step_status("faults-preprocess-killed", "preprocess_images") == "running")
    assert_nothing_lost(champion, before)
    ready = champion["root"] / "tta-ready"
    kill_when(paused_run("steps.infer.tta_predict:predict_imageset", path, "faults-tta-killed", ready), ready.exists)
    assert step_status("faults-tta-killed", "finetune") == "completed"
    assert step_status("faults-tta-killed", "tta_predict_val") == "running"  # orphaned by the kill
    assert_nothing_lost(champion, before)
    run = run_and_fetch("train", path, "faults-tta-next")
    assert statuses(run)["finetune"] == "cached" and statuses(run)["tta_predict_val"] == "completed"
    assert str(run.status.value) == "completed"
    assert_nothing_lost(champion, champion_after(run, before))


# fault point: (function where the run is killed, versions it leaves behind, the run's lr so no step is cached)
FAULT_POINTS = {
    "register, before the version exists": ("mlflow.tracking.client:MlflowClient._create_model_version", 0, 7e-3),
    "register, version created, before its tags": ("mlflow.tracking.client:MlflowClient.set_model_version_tag",
                                                   1, 6e-3),
    "promote, at the first alias moved": ("mlflow.tracking.client:MlflowClient.set_registered_model_alias", 1, 5e-3),
}


@pytest.mark.parametrize("point", list(FAULT_POINTS), ids=["register-create", "register-tags", "promote-alias"])
def test_sigkill_in_registration_or_promotion_loses_nothing_and_the_next_run_completes(champion, point, tmp_path):
    target, new_versions, lr = FAULT_POINTS[point]
    path = config(champion["root"] / f"{tmp_path.name}.yaml", champion["tree"], lr=lr)
    client = registry()
    before = int(client.get_model_version_by_alias(NAME, "champion").version)
    count = len(client.search_model_versions(f"name='{NAME}'"))
    ready = tmp_path / "ready"
    process = paused_run(target, path, f"faults-{tmp_path.name}", ready)
    kill_when(process, ready.exists)
    assert len(client.search_model_versions(f"name='{NAME}'")) == count + new_versions
    assert_nothing_lost(champion, before)
    run = run_and_fetch("train", path, f"faults-{tmp_path.name}-next")
    assert str(run.status.value) == "completed"
    assert_nothing_lost(champion, champion_after(run, before))


def test_a_full_disk_while_the_checkpoint_is_saved_loses_nothing_and_the_next_run_completes(champion, monkeypatch):
    import errno
    import os as os_module

    from materializers.checkpoint_materializer import CheckpointMaterializer

    def disk_full(self, data) -> None:  # the weights file half-written, then ENOSPC
        os_module.makedirs(self.uri, exist_ok=True)
        Path(self.uri, "model.safetensors").write_bytes(b"\0" * 1024)
        raise OSError(errno.ENOSPC, "No space left on device")

    path = config(champion["root"] / "enospc.yaml", champion["tree"], lr=4e-3)
    before = int(registry().get_model_version_by_alias(NAME, "champion").version)
    count = len(registry().search_model_versions(f"name='{NAME}'"))
    monkeypatch.setattr(CheckpointMaterializer, "save", disk_full)
    with pytest.raises(RuntimeError, match="failure in step"):
        run_and_fetch("train", path, "faults-enospc")
    assert step_status("faults-enospc", "finetune") == "failed"
    assert len(registry().search_model_versions(f"name='{NAME}'")) == count
    assert_nothing_lost(champion, before)
    monkeypatch.undo()
    run = run_and_fetch("train", path, "faults-enospc-next")
    assert statuses(run)["finetune"] == "completed" and str(run.status.value) == "completed"
    assert_nothing_lost(champion, champion_after(run, before))


ALIAS_MOVE = "mlflow.tracking.client:MlflowClient.set_registered_model_alias"


def wait_exit(process: subprocess.Popen, log: Path, timeout: float = 900) -> str:
    process.wait(timeout=timeout)
    return log.read_text()


def registry_database() -> Path:
    from pipelines import runner

    return Path(runner.tracking_uri().removeprefix("sqlite:///"))


def hold_database_lock(seconds: float, release: Path) -> None:
    """Lock the MLflow database as another writer would (an exclusive transaction), let the paused
    run go on (``release``), and hold the lock for ``seconds``."""
    import sqlite3

    connection = sqlite3.connect(registry_database(), timeout=60, isolation_level=None)
    connection.execute("BEGIN EXCLUSIVE")
    release.write_text("go")
    time.sleep(seconds)
    connection.execute("COMMIT")
    connection.close()


def test_a_registry_database_locked_during_promotion_is_waited_out_or_fails_cleanly(champion, tmp_path):
    before = int(registry().get_model_version_by_alias(NAME, "champion").version)
    count = len(registry().search_model_versions(f"name='{NAME}'"))
    impatient = config(tmp_path / "impatient.yaml", champion["tree"], lr=4.5e-3, registry_wait_s=5)
    ready, release, log = tmp_path / "ready", tmp_path / "release", tmp_path / "impatient.log"
    process = paused_run(ALIAS_MOVE, impatient, "faults-db-locked-impatient", ready, release, log)
    wait_until(process, ready.exists, log)
    hold_database_lock(26, release)  # past SQLite's 20 s busy timeout and the run's 5 s of patience
    out = wait_exit(process, log)
    assert process.returncode == 1, out
    assert ("error: step promote_model: the model registry stayed locked by another writer for over 5 s "
            "(set_registered_model_alias); the champion is unchanged") in out
    assert step_status("faults-db-locked-impatient", "promote_model") == "failed"
    assert len(registry().search_model_versions(f"name='{NAME}'")) == count + 1
    assert_nothing_lost(champion, before)

    patient = config(tmp_path / "patient.yaml", champion["tree"], lr=4.5e-3)  # same training: cached
    ready.unlink()
    release.unlink()
    log = tmp_path / "patient.log"
    process = paused_run(ALIAS_MOVE, patient, "faults-db-locked-patient", ready, release, log)
    wait_until(process, ready.exists, log)
    hold_database_lock(25, release)  # SQLite gives up after 20 s; the promotion's retry waits out the rest
    out = wait_exit(process, log)
    assert process.returncode == 0, out
    assert "model registry locked by another writer (set_registered_model_alias): retrying in 1 s" in out
    from zenml.client import Client

    run = Client().get_pipeline_run("faults-db-locked-patient")
    assert statuses(run)["finetune"] == "cached" and str(run.status.value) == "completed"
    assert_nothing_lost(champion, champion_after(run, before))


def test_two_runs_promoting_at_once_take_turns_and_the_second_compares_with_the_first(champion, tmp_path):
    from zenml.client import Client

    before = int(registry().get_model_version_by_alias(NAME, "champion").version)
    ready, release = tmp_path / "ready", tmp_path / "release"
    first = paused_run(ALIAS_MOVE, config(tmp_path / "first.yaml", champion["tree"], lr=3e-3),
                       "faults-concurrent-first", ready, release, tmp_path / "first.log")
    wait_until(first, ready.exists, tmp_path / "first.log")  # holds the promotion lock, stopped before its alias move
    second = spawn(config(tmp_path / "second.yaml", champion["tree"], lr=2e-3), "faults-concurrent-second",
                   tmp_path / "second.log")
    wait_until(second, lambda: "waiting for another run's promotion of" in (tmp_path / "second.log").read_text(),
               tmp_path / "second.log")
    assert step_status("faults-concurrent-second", "promote_model") == "running"
    release.write_text("go")
    for process, name in ((first, "first"), (second, "second")):
        assert process.wait(timeout=600) == 0, (tmp_path / f"{name}.log").read_text()
    runs = {name: Client().get_pipeline_run(f"faults-concurrent-{name}") for name in ("first", "second")}
    after_first = champion_after(runs["first"], before)
    assert output(runs["second"], "promote_model", "promotion")["champion_before"] == after_first
    assert_nothing_lost(champion, champion_after(runs["second"], after_first))
