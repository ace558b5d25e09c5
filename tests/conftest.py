"""Shared fixtures: an isolated ZenML/MLflow home, real-data location, generated X-rays.

The ZenML variables are set here, before anything imports zenml, so tests never touch a
developer's store or ``.zen/config.yaml``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_HOME = Path(tempfile.mkdtemp(prefix="cxr-tests-"))
os.environ["ZENML_CONFIG_PATH"] = str(_HOME / "zenml")
os.environ["ZENML_REPOSITORY_PATH"] = str(_HOME / "repo")
os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
os.environ["ZENML_LOGGING_VERBOSITY"] = "WARN"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
(_HOME / "repo").mkdir(parents=True, exist_ok=True)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cxr.data.ingest import data_dir  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_sessionfinish(session, exitstatus) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """``$CXR_DATA_DIR`` (default ../shared/data); tests that need it fail loudly if absent."""
    root = data_dir()
    if not (root / "kermany-pneumonia-224").is_dir():
        pytest.fail(f"real data not found under {root}: set CXR_DATA_DIR to the shared data folder")
    return root


def synthetic_xray(rng: np.random.Generator, size: int = 64, positive: bool = False) -> np.ndarray:
    """A gray chest-like image: two dark lung fields; positives get a bright blurred opacity."""
    image = np.full((size, size), 150, np.float32)
    for cx in (0.32, 0.68):
        cv2.ellipse(image, (int(cx * size), size // 2), (size // 6, size // 3), 0, 0, 360, 60, -1)
    if positive:
        x, y = rng.integers(size // 4, 3 * size // 4, 2)
        cv2.circle(image, (int(x), int(y)), size // 6, 230, -1)
    image = cv2.GaussianBlur(image, (0, 0), size / 40) + rng.normal(0, 8, image.shape)
    return image.clip(0, 255).astype(np.uint8)


def write_class_tree(root: Path, n_per_class: int = 12, size: int = 64, seed: int = 0,
                     ext: str = ".png") -> Path:
    """NORMAL/ and PNEUMONIA/ folders of synthetic images; two images per patient."""
    rng = np.random.default_rng(seed)
    for name, positive in (("NORMAL", False), ("PNEUMONIA", True)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            cv2.imwrite(str(root / name / f"patient{name[0]}{i // 2}_img{i}{ext}"),
                        synthetic_xray(rng, size, positive))
    return root


@pytest.fixture
def class_tree(tmp_path: Path) -> Path:
    return write_class_tree(tmp_path / "tree")
