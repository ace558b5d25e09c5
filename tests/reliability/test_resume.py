"""Resumable training: a run killed (SIGKILL) or stopped (SIGTERM) part-way resumes from its last
saved state and ends bit-identical to an uninterrupted run; bad resume states are never loaded."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from cxr.data.imageset import save_imageset
from cxr.train.resume import ResumeStateWarning, ResumeStore

pytestmark = pytest.mark.reliability
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def saved_split(synthetic_split, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("split")
    for name, part in zip(("train", "val"), synthetic_split):
        (folder / name).mkdir()
        save_imageset(part, str(folder / name))
    return folder


def spawn_worker(module: str, *args) -> subprocess.Popen:
    """``python -m tests.reliability.<module> ARGS`` on one thread, its output piped."""
    return subprocess.Popen([sys.executable, "-m", f"tests.reliability.{module}", *map(str, args)], cwd=REPO_ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def worker(data: Path, out: Path, resume: Path | None, *overrides: str) -> subprocess.Popen:
    return spawn_worker("fit_worker", data, out, resume or "-", *overrides)


def stop_mid_epoch(process: subprocess.Popen, progress_prefix: str, resume: Path) -> tuple[str, dict]:
    """SIGTERM ``process`` at its first progress line starting with ``progress_prefix`` (training
    is under way); its output and the manifest it saved."""
    for line in process.stdout:
        if line.startswith(progress_prefix):
            break
    process.send_signal(signal.SIGTERM)
    out = process.communicate(timeout=300)[0]
    assert process.returncode == 128 + signal.SIGTERM, out
    return out, saved_manifest(resume)


def finished(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    return out


def wait_for(predicate, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the worker never reached the state waited for"
        time.sleep(0.05)


def saved_manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def weights(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def uninterrupted(saved_split, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "ckpt"
    finished(worker(saved_split, out, None))
    return out


def test_a_run_killed_at_a_random_epoch_resumes_and_ends_bit_identical(saved_split, uninterrupted, tmp_path):
    kill_after = int(np.random.default_rng().integers(1, 4))  # epochs 1-3 of 4
    resume = tmp_path / "resume"
    process = worker(saved_split, tmp_path / "killed", resume)
    wait_for(lambda: saved_manifest(resume).get("epoch") == kill_after, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    out = finished(worker(saved_split, tmp_path / "resumed", resume))
    assert f"resuming training from epoch {kill_after + 1} of 4 (state in {resume})" in out
    assert weights(tmp_path / "resumed") == weights(uninterrupted)
    assert json.loads((tmp_path / "resumed" / "meta.json").read_text()) == json.loads(
        (uninterrupted / "meta.json").read_text())


def test_sigterm_mid_epoch_saves_the_batch_position_and_the_resumed_run_is_bit_identical(saved_split, tmp_path):
    settings = ("samples_per_epoch=200", "epochs=2")
    reference = tmp_path / "reference"
    finished(worker(saved_split, reference, None, *settings))
    resume = tmp_path / "resume"
    out, manifest = stop_mid_epoch(worker(saved_split, tmp_path / "stopped", resume, *settings), "epoch 1/2: ", resume)
    assert manifest["epoch"] == 0 and 0 < manifest["position"] < 25
    assert f"stopped in epoch 1 after batch {manifest['position']}" in out
    out = finished(worker(saved_split, tmp_path / "resumed", resume, *settings))
    assert f"resuming training from epoch 1, batch {manifest['position'] + 1} of 2" in out
    assert weights(tmp_path / "resumed") == weights(reference)


@pytest.mark.parametrize("averaging,scheduler", [("ema", "onecycle"), ("swa", "plateau"), ("none", "cosine_restarts")])
def test_resume_restores_averaging_and_schedule_state(synthetic_split, tmp_path, averaging, scheduler):
    from cxr.models.classifier import ModelConfig
    from cxr.train.config import TrainConfig
    from cxr.train.loop import fit

    train, val = synthetic_split
    cfg = TrainConfig(epochs=3, batch_size=8, amp=False, averaging=averaging, swa_epochs=2, scheduler=scheduler,
                      restart_epochs=1, mixup_alpha=0.2, mix_prob=0.5)
    model = ModelConfig(backbone="resnet10t", head_drop_rate=0.2)
    reference = fit(train, val, model, cfg, progress=False)
    store = ResumeStore(tmp_path / "resume", "fp")

    def crash_in_epoch_2(row: dict) -> None:
        if row["epoch"] == 2:
            raise RuntimeError("injected crash")

    with pytest.raises(RuntimeError, match="injected crash"):
        fit(train, val, model, cfg, progress=False, resume=store, on_epoch=crash_in_epoch_2)
    assert saved_manifest(store.folder)["epoch"] == 1
    replayed = []
    resumed = fit(train, val, model, cfg, progress=False, resume=store, on_epoch=replayed.append)
    assert [row["epoch"] for row in replayed] == [1, 2, 3]
    for name, tensor in reference.checkpoint.model_state.items():
        assert resumed.checkpoint.model_state[name].equal(tensor), name
    assert resumed.history["kept"].tolist() == reference.history["kept"].tolist()
    assert resumed.history["val_auc"].tolist() == reference.history["val_auc"].tolist()


def test_a_finished_state_returns_without_training(synthetic_split, tmp_path, capsys):
    from cxr.models.classifier import ModelConfig
    from cxr.train.config import TrainConfig
    from cxr.train.loop import fit

    train, val = synthetic_split
    cfg, store = TrainConfig(epochs=1, batch_size=8, amp=False), ResumeStore(tmp_path / "resume", "fp")
    first = fit(train, val, ModelConfig(backbone="resnet18"), cfg, progress=False, resume=store)
    again = fit(train, val, ModelConfig(backbone="resnet18"), cfg, progress=True, resume=store)
    assert "training had finished: 1 epochs restored from" in capsys.readouterr().out
    assert all(again.checkpoint.model_state[k].equal(v) for k, v in first.checkpoint.model_state.items())


def write_state(folder: Path, fingerprint: str = "fp") -> ResumeStore:
    store = ResumeStore(folder, fingerprint)
    store.save({"epoch": 1, "weights": np.arange(3).tolist()})
    return store


@pytest.mark.parametrize("damage,reason", [
    (lambda f: next(f.glob("state-*.pt")).write_bytes(b"\0" * 64), "fails its checksum (corrupt)"),
    (lambda f: next(f.glob("state-*.pt")).unlink(), "is missing"),
    (lambda f: (f / "state.json").write_text("{not json"), "its state.json is unreadable or of another format"),
    (lambda f: None, "it was saved for other inputs (stale)"),
], ids=["corrupt", "missing file", "bad manifest", "stale"])
def test_a_corrupt_stale_or_unreadable_state_is_discarded_with_a_warning(tmp_path, damage, reason):
    write_state(tmp_path / "resume")
    damage(tmp_path / "resume")
    fingerprint = "other" if "stale" in reason else "fp"
    with pytest.warns(ResumeStateWarning, match=rf"discarded: .*{re.escape(reason)}; training starts from the beginning"):
        assert ResumeStore(tmp_path / "resume", fingerprint).load() is None
    assert not (tmp_path / "resume").exists()


def test_a_state_round_trips_and_a_save_replaces_the_previous_file(tmp_path):
    store = write_state(tmp_path / "resume")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.load() == {"epoch": 1, "weights": [0, 1, 2]}
    store.save({"epoch": 2})
    assert store.load() == {"epoch": 2} and len(list(store.folder.glob("state-*.pt"))) == 1
    store.clear()
    assert store.load() is None


def test_a_remote_store_is_mirrored_state_first_and_pulled_back_by_a_new_process(tmp_path):
    from steps.resume import MirroredResumeStore

    remote = tmp_path / "bucket" / "resume" / "finetune-key"
    first = MirroredResumeStore(str(remote), "fp")
    first.save({"epoch": 1})
    first.save({"epoch": 2})
    current = json.loads((remote / "state.json").read_text())["file"]
    assert sorted(p.name for p in remote.iterdir()) == sorted(["state.json", current])
    retried = MirroredResumeStore(str(remote), "fp")  # a new pod: empty local scratch folder
    assert retried.folder != first.folder and retried.load() == {"epoch": 2}
    retried.clear()
    assert not remote.exists() and MirroredResumeStore(str(remote), "fp").load() is None


@pytest.mark.parametrize("method", ["moco", "byol", "swav"])
def test_ssl_pretraining_crashed_after_an_epoch_resumes_bit_identical(synthetic_split, tmp_path, method):
    from cxr.ssl.pretrain import SSLConfig, pretrain

    images = synthetic_split[0].images
    cfg = SSLConfig(method=method, epochs=3, batch_size=8, positives="two_views", hidden_dim=64, out_dim=32,
                    memory_bank_size=64 if method == "moco" else None, small_views=1 if method == "swav" else None)
    reference, reference_history = pretrain(images, "resnet10t", cfg, progress=False)
    store = ResumeStore(tmp_path / "resume", "fp")

    def crash_in_epoch_2(row: dict) -> None:
        if row["epoch"] == 2:
            raise RuntimeError("injected crash")

    with pytest.raises(RuntimeError, match="injected crash"):
        pretrain(images, "resnet10t", cfg, progress=False, on_epoch=crash_in_epoch_2, resume=store)
    assert saved_manifest(store.folder)["epoch"] == 2  # saved before on_epoch saw the row
    replayed = []
    resumed, history = pretrain(images, "resnet10t", cfg, progress=False, on_epoch=replayed.append, resume=store)
    assert [row["epoch"] for row in replayed] == [1, 2, 3]
    assert history["loss"].tolist() == reference_history["loss"].tolist()
    for name, tensor in reference.state_dict.items():
        assert resumed.state_dict[name].equal(tensor), name


def test_ssl_sigterm_mid_epoch_saves_the_batch_position_and_the_resumed_run_is_bit_identical(synthetic_split,
                                                                                             tmp_path):
    images = tmp_path / "images.npy"
    np.save(images, np.concatenate([synthetic_split[0].images] * 3))  # 240 images: 30 batches an epoch

    finished(spawn_worker("ssl_worker", images, tmp_path / "reference"))
    resume = tmp_path / "resume"
    out, manifest = stop_mid_epoch(spawn_worker("ssl_worker", images, tmp_path / "stopped", resume),
                                   "ssl simsiam 1/2: ", resume)
    assert manifest["epoch"] == 0 and 0 < manifest["position"] < 30
    assert f"stopped in SSL epoch 1 after batch {manifest['position']}" in out
    out = finished(spawn_worker("ssl_worker", images, tmp_path / "resumed", resume))
    assert f"resuming SSL pretraining from epoch 1, batch {manifest['position'] + 1} of 2" in out
    assert weights(tmp_path / "resumed") == weights(tmp_path / "reference")
