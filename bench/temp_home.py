"""A fresh, temporary ZenML/MLflow home, so a benchmark measures a cold run and never touches
the user's store. Call ``fresh_home`` before anything imports zenml."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fresh_home(prefix: str) -> Path:
    """Create the home and point ZenML (config and repository) at it, offline."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update(ZENML_CONFIG_PATH=str(home / "zen"), ZENML_REPOSITORY_PATH=str(home / "repo"),
                      ZENML_ANALYTICS_OPT_IN="false", MLFLOW_DISABLE_TELEMETRY="true")
    (home / "repo").mkdir()
    return home
