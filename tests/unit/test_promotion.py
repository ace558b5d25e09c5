"""Champion/challenger promotion: the paired bootstrap decision, and alias moves on a real
MLflow registry (temporary SQLite store) with models registered as the pipeline does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.data.imageset import ImageSet
from cxr.errors import DataError
from cxr.lifecycle.promotion import PromotionConfig, bootstrap_auc_deltas, decide, holdout_set
from cxr.models.checkpoint import Checkpoint, CheckpointMeta
from cxr.models.classifier import Classifier, ModelConfig
from tests.helpers import write_images

RNG = np.random.default_rng(0)


class TestDecision:
    y = (RNG.random((400, 2)) < 0.3).astype(np.float32)
    good = np.clip(y * 0.4 + RNG.random(y.shape) * 0.6, 0, 1)
    weak = np.clip(y * 0.1 + RNG.random(y.shape) * 0.9, 0, 1)
    mask = np.ones_like(y, bool)

    def test_better_is_promoted_worse_and_equal_are_not(self):
        assert decide(self.y, self.mask, self.good, self.weak).promote
        assert not decide(self.y, self.mask, self.weak, self.good).promote
        tie = decide(self.y, self.mask, self.good, self.good)
        assert not tie.promote and tie.ci_low == tie.ci_high == 0
        assert decide(self.y, self.mask, self.weak, None).reason == "no champion yet"

    def test_margin_must_be_beaten_with_confidence(self):
        decision = decide(self.y, self.mask, self.good, self.weak)
        assert decision.ci_low < decision.delta < decision.ci_high
        assert not decide(self.y, self.mask, self.good, self.weak, PromotionConfig(margin=decision.ci_low + 0.01)).promote

    def test_bootstrap_is_paired_and_ignores_unknown_labels(self):
        mask = self.mask.copy()
        mask[:200, 1] = False
        shuffled = self.weak.copy()
        shuffled[:200, 1] = RNG.random(200)  # unknown rows: any score must not matter
        a = bootstrap_auc_deltas(self.y, mask, self.good, self.weak, 200, seed=1)
        b = bootstrap_auc_deltas(self.y, mask, self.good, shuffled, 200, seed=1)
        np.testing.assert_allclose(a, b)
        assert np.all(bootstrap_auc_deltas(self.y, self.mask, self.good, self.good, 200) == 0)


def brightness_checkpoint(sign: float, size: int = 32) -> Checkpoint:
    """A classifier whose logit is ``sign`` x the mean of one feature channel that tracks
    brightness, so +1 ranks the opacity images high and -1 ranks them low."""
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet10t", head="linear")
    model = Classifier(cfg, 1).eval()
    with torch.no_grad():
        model.head.fc.weight.zero_()
        model.head.fc.bias.zero_()
        bright = model.backbone(torch.ones(1, 1, size, size)).mean((2, 3))[0]
        dark = model.backbone(torch.zeros(1, 1, size, size)).mean((2, 3))[0]
        model.head.fc.weight[0] = sign * (bright - dark)
    meta = CheckpointMeta(model=cfg, image_size=size, label_names=["opacity"], mean=0.0, std=1.0,
                          preprocess=PreprocessConfig(image_size=size, clahe=False).model_dump())
    return Checkpoint.from_model(model, meta)


def register(checkpoint: Checkpoint, name: str, train_paths: tuple[str, ...] = ()) -> int:
    import mlflow

    from steps.registry.lifecycle import log_served_model

    with mlflow.start_run():
        return log_served_model(checkpoint, name, train_paths=train_paths)


def test_better_version_becomes_champion_worse_stays_challenger_and_rollback(tmp_path: Path, registry, monkeypatch):
    from cxr.infer.tta import predict_imageset
    from cxr.metrics.classification import mean_auc
    from steps.registry import lifecycle

    val = write_images(tmp_path / "val", 40)
    decoded = preprocess_imageset(val, PreprocessConfig(image_size=32, clahe=False), progress=False)
    good, bad = brightness_checkpoint(+1.0), brightness_checkpoint(-1.0)
    assert mean_auc(val.labels, predict_imageset(good, decoded, ("original",))[["opacity"]].to_numpy()) > 0.9

    name = "cxr-promotion-test"
    v1 = register(bad, name)
    assert lifecycle.promote(registry, name, v1, val, PromotionConfig())[0] == "champion"
    v2 = register(good, name)
    alias, decision, before = lifecycle.promote(registry, name, v2, val, PromotionConfig())
    assert (alias, before) == ("champion", v1) and decision.promote and decision.ci_low > 0
    v3 = register(bad, name)
    alias, decision, before = lifecycle.promote(registry, name, v3, val, PromotionConfig())
    assert (alias, before) == ("challenger", v2) and not decision.promote
    assert int(registry.get_model_version_by_alias(name, "champion").version) == v2
    assert int(registry.get_model_version_by_alias(name, "previous_champion").version) == v1
    assert float(registry.get_model_version(name, str(v3)).tags["promotion_delta"]) < 0

    def broken(*_args):
        raise RuntimeError("registry unreachable")

    v4 = register(good, name)
    monkeypatch.setattr(lifecycle, "registry_predictions", broken)
    with pytest.raises(RuntimeError, match="unreachable"):
        lifecycle.promote(registry, name, v4, val, PromotionConfig())
    assert int(registry.get_model_version_by_alias(name, "champion").version) == v2

    assert lifecycle.rollback(registry, name) == (v1, v2)
    assert int(registry.get_model_version_by_alias(name, "champion").version) == v1
    with pytest.raises(ValueError, match="nothing to roll back to"):
        lifecycle.rollback(registry, name)


def test_served_version_honours_the_views_param(tmp_path: Path, registry):
    import mlflow

    from cxr.infer.serving import predict_files

    val = write_images(tmp_path / "val", 40)
    checkpoint = brightness_checkpoint(+1.0)
    version = register(checkpoint, "cxr-params-test")
    served = mlflow.pyfunc.load_model(f"models:/cxr-params-test/{version}")
    frame = pd.DataFrame({"id": val.ids, "path": val.manifest["path"]})
    tta = served.predict(frame, params={"views": ["original", "hflip", "zoom"]})
    expected = predict_files(checkpoint, frame["path"].tolist(), val.ids, views=("original", "hflip", "zoom"))
    np.testing.assert_allclose(tta["opacity"], expected["opacity"], atol=1e-6)
    assert not np.allclose(tta["opacity"], served.predict(frame)["opacity"], atol=1e-4)


def run_images(tmp_path: Path) -> ImageSet:
    """train/val/proxy splits of generated images (ids unique per split); the proxy's labels
    are inverted, so a model that is better on val is worse on the proxy."""
    parts = []
    for k, name in enumerate(("train", "val", "proxy")):
        part = write_images(tmp_path / name, 40 if name != "train" else 8, seed=k)
        labels = 1 - part.labels if name == "proxy" else part.labels
        manifest = part.manifest.assign(id=[f"{name}_{i}" for i in part.ids], split=name)
        parts.append(ImageSet(manifest, part.label_names, labels, part.mask))
    return ImageSet(pd.concat([p.manifest for p in parts], ignore_index=True), parts[0].label_names,
                    np.concatenate([p.labels for p in parts]), np.concatenate([p.mask for p in parts]))


def test_promotion_decides_on_the_holdout_not_on_val(tmp_path: Path, registry):
    from steps.registry import lifecycle

    images = run_images(tmp_path)
    name = "cxr-holdout-test"
    v1 = register(brightness_checkpoint(+1.0), name)
    assert lifecycle.promote(registry, name, v1, images.split("val"), PromotionConfig())[0] == "champion"
    v2 = register(brightness_checkpoint(-1.0), name)
    on_val, _, _ = lifecycle.promote(registry, name, v2, images.split("val"), PromotionConfig())
    assert on_val == "challenger"
    cfg = PromotionConfig(holdout="proxy")
    holdout = holdout_set(images, cfg)
    assert holdout.ids == images.split("proxy").ids
    alias, decision, before = lifecycle.promote(registry, name, v2, holdout, cfg, "proxy")
    assert (alias, before) == ("champion", v1) and decision.delta > 0.5
    tags = registry.get_model_version(name, str(v2)).tags
    assert tags["promotion_holdout"] == "proxy" and tags["promotion_holdout_images"] == "40"
    assert tags["promotion_holdout_hash"] == images.split("proxy").content_hash()


def test_holdout_images_the_champion_trained_on_are_left_out_for_both(tmp_path: Path, registry):
    from steps.registry import lifecycle

    images = run_images(tmp_path)
    proxy = images.split("proxy")
    name = "cxr-champion-record-test"
    v1 = register(brightness_checkpoint(+1.0), name, train_paths=tuple(proxy.manifest["path"][:10]))
    assert lifecycle.promote(registry, name, v1, images.split("val"), PromotionConfig())[0] == "champion"
    v2 = register(brightness_checkpoint(-1.0), name)
    alias, decision, _ = lifecycle.promote(registry, name, v2, proxy, PromotionConfig(holdout="proxy"), "proxy")
    tags = registry.get_model_version(name, str(v2)).tags
    assert tags["promotion_holdout_left_out_champion_trained"] == "10" and tags["promotion_holdout_images"] == "30"
    assert tags["promotion_champion_training_record"] == "present" and alias == "champion"
    v3 = register(brightness_checkpoint(+1.0), name)
    with pytest.warns(UserWarning, match=f"champion version {v2} kept no record"):
        lifecycle.promote(registry, name, v3, proxy, PromotionConfig(holdout="proxy"), "proxy")
    assert registry.get_model_version(name, str(v3)).tags["promotion_champion_training_record"] == "missing"


@pytest.mark.parametrize("decoded", [False, True])
def test_holdout_overlapping_train_is_refused_by_id_and_by_content(tmp_path: Path, decoded: bool):
    import shutil

    images = run_images(tmp_path)
    prepare = (lambda s: preprocess_imageset(s, PreprocessConfig(image_size=32, clahe=False), progress=False)) \
        if decoded else (lambda s: s)
    clean = prepare(images)
    assert len(holdout_set(clean, PromotionConfig(holdout="val"))) == 40
    same_id = clean.split("proxy")
    same_id.manifest.loc[0, "id"] = clean.split("train").ids[0]
    with pytest.raises(DataError, match=r"overlaps the train split: 1 image id\(s\) and 0 image"):
        holdout_set(clean, PromotionConfig(holdout="site"), external=same_id)
    copy = tmp_path / "site" / "renamed_copy.png"
    copy.parent.mkdir()
    shutil.copy(images.split("train").manifest["path"][3], copy)
    site = write_images(tmp_path / "site", 6, seed=9)
    site.manifest.loc[0, ["id", "path"]] = ["renamed_copy", str(copy)]
    with pytest.raises(DataError, match=r"'site' overlaps the train split: 0 image id\(s\) and 1 image"):
        holdout_set(clean, PromotionConfig(holdout="site"), external=prepare(site))
    unlabelled = ImageSet(site.manifest, (), np.zeros((6, 0), np.float32), np.zeros((6, 0), bool))
    with pytest.raises(DataError, match="must be labelled like the training data"):
        holdout_set(clean, PromotionConfig(holdout="site"), external=prepare(unlabelled))
    with pytest.raises(ValueError, match="cannot be the train split"):
        PromotionConfig(holdout="train")


def test_a_champion_moved_by_another_run_while_deciding_is_decided_against_again(tmp_path: Path, registry,
                                                                                  monkeypatch):
    from steps.registry import lifecycle

    val = write_images(tmp_path / "val", 40)
    name = "cxr-race-test"
    v1 = register(brightness_checkpoint(-1.0), name)
    lifecycle.promote(registry, name, v1, val, PromotionConfig())
    v2, v3 = register(brightness_checkpoint(+1.0), name), register(brightness_checkpoint(+1.0), name)
    original, compared = lifecycle.decide_against, []

    def other_run_promotes_meanwhile(client, model, version, champion, *args):
        compared.append(int(champion.version))
        if len(compared) == 1:  # another run moves the champion to v2 while this one scores against v1
            registry.set_registered_model_alias(name, "champion", str(v2))
        return original(client, model, version, champion, *args)

    monkeypatch.setattr(lifecycle, "decide_against", other_run_promotes_meanwhile)
    alias, decision, before = lifecycle.promote(registry, name, v3, val, PromotionConfig())
    assert compared == [v1, v2] and before == v2
    assert alias == "challenger" and not decision.promote  # as good as v2 is no gain; against v1 it would have won
    assert int(registry.get_model_version_by_alias(name, "champion").version) == v2


def test_a_registry_locked_by_another_writer_is_waited_out_then_reported(registry, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

    from cxr.errors import RegistryBusyError
    from steps.registry import lifecycle

    clock, sleeps = [0.0], []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(lifecycle, "time", type("FakeTime", (), {"monotonic": lambda: clock[0], "sleep": sleep}))
    outcomes = iter([MlflowException("database is locked", TEMPORARILY_UNAVAILABLE)] * 2 + ["done"])

    def locked_twice() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert lifecycle.while_locked(locked_twice, 60, "set alias") == "done" and sleeps == [1.0, 2.0]

    def locked() -> None:
        raise MlflowException("(sqlite3.OperationalError) database is locked", TEMPORARILY_UNAVAILABLE)

    sleeps.clear()
    with pytest.raises(RegistryBusyError, match=r"locked by another writer for over 5 s \(set alias\); the champion"):
        lifecycle.while_locked(locked, 5, "set alias")
    assert sleeps == [1.0, 2.0, 2.0]  # the last sleep is cut to the time left

    def disk_error() -> None:
        raise MlflowException("(sqlite3.OperationalError) disk I/O error", TEMPORARILY_UNAVAILABLE)

    sleeps.clear()
    with pytest.raises(MlflowException, match="disk I/O error"):  # not a lock: raised at once
        lifecycle.while_locked(disk_error, 60, "set alias")
    assert sleeps == []
    monkeypatch.setattr(registry, "get_model_version_by_alias", lambda *_: locked())
    with pytest.raises(MlflowException, match="database is locked"):  # never read as "no champion"
        lifecycle.alias_version(registry, "any", "champion")
    missing = MlflowException("Registered model alias champion not found.", INVALID_PARAMETER_VALUE)
    monkeypatch.setattr(registry, "get_model_version_by_alias", lambda *_: (_ for _ in ()).throw(missing))
    assert lifecycle.alias_version(registry, "any", "champion") is None


def test_a_failed_champion_move_puts_previous_champion_back():
    from types import SimpleNamespace

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

    from cxr.lifecycle.promotion import PromotionDecision
    from steps.registry import lifecycle

    class LockedAtTheChampion:
        """A registry whose ``champion`` alias cannot be written."""

        aliases = {"champion": "3", "previous_champion": "2"}

        def set_model_version_tag(self, *_args) -> None:
            pass

        def get_model_version_by_alias(self, _name, alias):
            if alias not in self.aliases:
                raise MlflowException(f"alias {alias} not found", INVALID_PARAMETER_VALUE)
            return SimpleNamespace(version=self.aliases[alias])

        def set_registered_model_alias(self, _name, alias, version) -> None:
            if alias == "champion":
                raise MlflowException("database is locked", TEMPORARILY_UNAVAILABLE)
            self.aliases[alias] = version

    client = LockedAtTheChampion()
    with pytest.raises(MlflowException, match="locked"):
        lifecycle.apply_decision(client, "m", 4, PromotionDecision(True, "better", 0.9), champion=SimpleNamespace(
            version="3"))
    assert client.aliases == {"champion": "3", "previous_champion": "2"}  # a rollback still goes to 2


def test_a_second_promotion_of_a_model_waits_for_the_first_and_gives_up_with_a_clear_error(registry):
    import mlflow

    from cxr.errors import RegistryBusyError
    from steps.registry import lifecycle

    path = lifecycle.promotion_lock_path(mlflow.get_registry_uri(), "cxr-lock-test")
    assert path.name == "mlflow.db.promotion-cxr-lock-test.lock"
    with lifecycle.promotion_lock("cxr-lock-test", 1):
        with pytest.raises(RegistryBusyError, match=r"another promotion of 'cxr-lock-test' held .* for over 0.2 s"):
            with lifecycle.promotion_lock("cxr-lock-test", 0.2):
                pass
        with lifecycle.promotion_lock("cxr-other-model", 0.2):
            pass
    with lifecycle.promotion_lock("cxr-lock-test", 0.2):
        pass
    assert lifecycle.promotion_lock_path("http://mlflow:5000", "cxr-lock-test") is None
