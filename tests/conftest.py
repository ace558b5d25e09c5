"""Shared fixtures: an isolated ZenML/MLflow home, real-data location, generated X-rays.

Under pytest-xdist every worker is its own process with its own home, so workers never share
a ZenML or MLflow store.

The ZenML and MLflow variables are set here, before anything imports zenml or mlflow, so
tests never touch a developer's store, ``.zen/config.yaml`` or the checkout: MLflow's
defaults (``sqlite:///mlflow.db`` and artifacts under ``./mlruns``) are relative to the
working directory. ZenML's MLflow tracker ignores both: it reads its own tracking URI and
puts its experiments' artifacts in the stack's artifact store.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

_HOME = Path(tempfile.mkdtemp(prefix="cxr-tests-"))
os.environ["ZENML_CONFIG_PATH"] = str(_HOME / "zenml")
os.environ["ZENML_REPOSITORY_PATH"] = str(_HOME / "repo")
os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
os.environ["ZENML_LOGGING_VERBOSITY"] = "WARN"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
_MLFLOW_DEFAULTS = {"MLFLOW_TRACKING_URI": f"sqlite:///{_HOME / 'mlflow.db'}",
                    "_MLFLOW_SERVER_ARTIFACT_ROOT": str(_HOME / "mlflow-artifacts")}  # default artifact root of a new store
os.environ.update(_MLFLOW_DEFAULTS)
(_HOME / "repo").mkdir(parents=True, exist_ok=True)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:  # each xdist worker gets its share of the cores, so torch threads do not oversubscribe them
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import pytest  # noqa: E402

from cxr.data.ingest import data_dir  # noqa: E402
from tests.helpers import labelled_split, write_class_tree  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def temporary_mlflow_store(monkeypatch) -> None:
    """Every test starts with the temporary MLflow defaults: ZenML's MLflow tracker removes
    MLFLOW_TRACKING_URI from the environment after a step, which would leave later tests
    writing ./mlflow.db in the checkout. A URI an earlier test set in-process is cleared first:
    ``mlflow.set_tracking_uri(None)`` would otherwise also unset the variable set here."""
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)
        sys.modules["mlflow"].set_registry_uri(None)
    for name, value in _MLFLOW_DEFAULTS.items():
        monkeypatch.setenv(name, value)


def pytest_sessionfinish(session, exitstatus) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """``$CXR_DATA_DIR`` (default ../shared/data); tests that need it fail loudly if absent."""
    root = data_dir()
    if not (root / "kermany-pneumonia-224").is_dir():
        pytest.fail(f"real data not found under {root}: set CXR_DATA_DIR to the shared data folder")
    return root


@pytest.fixture
def class_tree(tmp_path: Path) -> Path:
    """A generated NORMAL/PNEUMONIA tree of 12 images each (64 px)."""
    return write_class_tree(tmp_path / "tree")


@pytest.fixture(scope="module")
def synthetic_split(tmp_path_factory) -> tuple:
    """(train, val) of 40 generated images per class at 32 px, split by patient."""
    return labelled_split(tmp_path_factory.mktemp("synthetic"), n_per_class=40)


@pytest.fixture
def registry(tmp_path: Path, monkeypatch):
    """An MlflowClient on a fresh SQLite store in ``tmp_path``, active for the test, artifacts beside it."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)  # set_registry_uri exports it and never unsets it
    for leftover in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(leftover, raising=False)  # set by earlier ZenML runs in this process
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(uri, uri)
    client.create_experiment("cxr-test", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("cxr-test")
    yield client
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
