"""Tests write MLflow stores only under the temporary home that conftest sets up."""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from tests.conftest import REPO_ROOT


def local_path(uri: str) -> Path:
    """The local folder or file a ``file:`` or ``sqlite:///`` URI names."""
    if uri.startswith("sqlite:///"):
        return Path(unquote(uri[len("sqlite:///"):]))
    return Path(unquote(urlparse(uri).path))


def test_default_mlflow_store_and_artifacts_are_temporary(monkeypatch):
    import mlflow

    for leftover in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(leftover, raising=False)
    mlflow.set_experiment("isolation-probe")  # a new experiment in the default store gets the default artifact root
    with mlflow.start_run():
        mlflow.log_text("probe", "probe.txt")
        artifacts = local_path(mlflow.get_artifact_uri())
    store = local_path(mlflow.get_tracking_uri())
    temporary = Path(tempfile.gettempdir()).resolve()
    for path in (store, artifacts):
        assert path.is_absolute() and temporary in path.resolve().parents, path
        assert REPO_ROOT not in path.resolve().parents and Path.cwd().resolve() not in path.resolve().parents
    assert (artifacts / "probe.txt").read_text() == "probe"
