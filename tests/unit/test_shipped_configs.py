"""Every shipped training config validates against the core's config models, and its adapt
and robustness blocks name sets the config has (without compiling through ZenML)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter

from cxr.adapt.target import AdaptConfig, check_adapt_target
from cxr.cft.genetic import CFTConfig
from cxr.data.ingest import ExternalSet, IngestConfig
from cxr.data.leakage import AuditConfig
from cxr.data.preprocess import PreprocessConfig
from cxr.data.split import SplitConfig
from cxr.lifecycle.promotion import PromotionConfig
from cxr.metrics.generalisation import ThresholdConfig
from cxr.metrics.robustness import RobustnessConfig
from cxr.models.classifier import ModelConfig
from cxr.ssl.pretrain import SSLConfig
from cxr.train.config import TrainConfig
from tests.conftest import REPO_ROOT

MODELS = {"data": IngestConfig, "test_data": IngestConfig, "split": SplitConfig, "preprocess": PreprocessConfig,
          "model": ModelConfig, "train": TrainConfig, "ssl": SSLConfig, "cft": CFTConfig, "promotion": PromotionConfig,
          "external": list[ExternalSet], "thresholds": ThresholdConfig, "audit": AuditConfig, "adapt": AdaptConfig,
          "robustness": RobustnessConfig}
TRAINING = [REPO_ROOT / "zenml_config.yaml"] + [p for p in sorted((REPO_ROOT / "configs").glob("*.yaml"))
                                               if "train" in yaml.safe_load(p.read_text())["parameters"]]


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: p.name)
def test_training_config_validates(path: Path):
    params = yaml.safe_load(path.read_text())["parameters"]
    parsed = {key: TypeAdapter(MODELS[key]).validate_python(value) for key, value in params.items()
              if key in MODELS and value is not None}
    if "adapt" in parsed:
        check_adapt_target(parsed["adapt"], "test_data" in parsed,
                           [e.name for e in parsed.get("external", [])], "ssl" in parsed)


def test_the_kermany_defaults_adapt_to_the_test_folder_score_robustness_and_augment_as_measured():
    for name in ("zenml_config.yaml", "configs/full.yaml", "configs/nih1000.yaml"):
        params = yaml.safe_load((REPO_ROOT / name).read_text())["parameters"]
        assert AdaptConfig(**params["adapt"]).methods == ["adabn"], name
        assert RobustnessConfig(**params["robustness"]).adabn, name
        augment = TrainConfig(**params["train"]).augment
        acquisition = (augment.gamma, augment.blur_prob, augment.noise_std, augment.jpeg_prob, augment.resample_prob)
        # the measured choice: acquisition augmentations helped the full config's proxy and corruption AUC
        # and lowered the default's proxy AUC
        assert all(acquisition) == (name == "configs/full.yaml") and any(acquisition) == all(acquisition), name
