"""The MLflow side of the model lifecycle: log a checkpoint or an ensemble as a registered
pyfunc version, score registered versions, move champion/challenger aliases (no deprecated stages), roll
back. Shared by the registry steps and ``run.py rollback``; no ZenML imports, so it is
tested against a plain MLflow store.

Writes are ordered so that an interruption never leaves the registry without the old
champion: ``previous_champion`` is set first, then ``champion`` moves in one call. Promotions
(and rollbacks) of one model are serialised (a file lock beside a local SQLite store; on a
tracking server, the champion is re-read before the aliases move and the decision is taken
again if it moved), and a SQLite registry locked by another writer is waited out, up to
``promotion.registry_wait_s`` per registry call.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from contextlib import contextmanager
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import mlflow
import numpy as np
import pandas as pd
from filelock import FileLock, Timeout
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from cxr.data.imageset import ImageSet, file_digest
from cxr.errors import DataError, RegistryBusyError
from cxr.infer.ensemble import EnsembleModel, save_ensemble_model
from cxr.infer.serving import ServedModel, example_request, served_labels
from cxr.infer.tta import SINGLE_VIEW
from cxr.lifecycle.promotion import PromotionConfig, PromotionDecision, decide
from cxr.metrics.generalisation import part_labels
from cxr.models.checkpoint import save_checkpoint

logger = logging.getLogger(__name__)
T = TypeVar("T")
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"
NOT_FOUND = ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")
LOCKED = ("database is locked", "database table is locked")
TRAIN_DIGESTS = "train_digests.txt"
PYFUNC_FILE = Path(__file__).with_name("cxr_pyfunc.py")
CORE_DIR = Path(__file__).resolve().parents[2] / "cxr"
SERVING_PACKAGES = ("torch", "torchvision", "timm", "safetensors", "numpy", "pandas", "pydantic",
                    "opencv-python-headless", "scikit-learn", "matplotlib", "pillow", "tqdm", "pydicom", "python-gdcm")


def served_signature(label_names: list[str]) -> ModelSignature:
    """Input ``id``, ``image`` (base64 file bytes) and ``path``, each optional (a row needs an
    image or a path); output ``id``, one probability per label, the guardrails'
    ``flag``/``flag_reason``, ``error`` and, at an operating point, ``<label>_positive``; the
    ``views``/``batch_size``/``guardrails``/``operating_point`` params (without a params schema
    MLflow drops them)."""
    return ModelSignature(
        inputs=Schema([ColSpec("string", "id", required=False), ColSpec("string", "image", required=False),
                       ColSpec("string", "path", required=False)]),
        outputs=Schema([ColSpec("string", "id"), *(ColSpec("double", n) for n in label_names),
                        ColSpec("boolean", "flag", required=False), ColSpec("string", "flag_reason", required=False),
                        ColSpec("string", "error", required=False),
                        *(ColSpec("boolean", f"{n}_positive", required=False) for n in label_names)]),
        params=ParamSchema([ParamSpec("views", "string", list(SINGLE_VIEW), shape=(-1,)),
                            ParamSpec("batch_size", "long", 64), ParamSpec("guardrails", "boolean", True),
                            ParamSpec("operating_point", "string", "")]))


def log_served_model(model: ServedModel, name: str, tags: dict[str, str] | None = None,
                     train_paths: Sequence[str] = ()) -> int:
    """Log a checkpoint or an ensemble as a pyfunc (safetensors + the core's code, no pickle)
    under the active MLflow run, register it as a new version of ``name`` with ``tags``;
    returns the version. ``train_paths``' file digests are logged beside it, so a later
    promotion can leave out of its holdout the images this version trained on."""
    if train_paths:
        mlflow.log_text("\n".join(sorted({file_digest(path) for path in train_paths})), TRAIN_DIGESTS)
    ensemble = isinstance(model, EnsembleModel)
    with tempfile.TemporaryDirectory() as tmp:
        save_ensemble_model(model, tmp) if ensemble else save_checkpoint(model, tmp)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_FILE), artifacts={"ensemble" if ensemble else "checkpoint": tmp},
            code_paths=[str(CORE_DIR)], registered_model_name=name, signature=served_signature(served_labels(model)),
            input_example=(example_request(), {"guardrails": True}),
            pip_requirements=[f"{p}=={package_version(p)}" for p in SERVING_PACKAGES])
    version = int(info.registered_model_version)
    client = MlflowClient()
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, str(version), key, value)
    return version


def served_model(model_uri: str) -> ServedModel:
    """The checkpoint or ensemble a registered version (e.g. ``models:/name@champion``) serves.

    Each version keeps the pyfunc file it was logged with; versions from before ensembles
    could be registered hold their checkpoint as ``checkpoint`` rather than ``model``.
    """
    python_model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    return python_model.model if hasattr(python_model, "model") else python_model.checkpoint


def registry_predictions(name: str, version: str, images: ImageSet) -> pd.DataFrame:
    """Single-view predictions of a registered version on ``images``' files, as it is served,
    without the guardrail and error columns (every holdout image is scored, flagged or not; one
    that cannot be decoded is a DataError)."""
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    scored = model.predict(pd.DataFrame({"id": images.ids, "path": images.manifest["path"].tolist()}),
                           params={"guardrails": False})
    if "error" not in scored.columns:  # a version logged before served rows carried their errors
        return scored
    errors = scored["error"][scored["error"] != ""].tolist()
    if errors:
        raise DataError(f"version {version} could not score {len(errors)} holdout image(s): {errors[0]}")
    return scored.drop(columns="error")


def trained_digests(version: ModelVersion) -> set[str] | None:
    """File digests of the images ``version`` trained on, or None where it kept no record
    (registered before the record existed, or outside a run)."""
    if not version.run_id:
        return None
    try:
        path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=TRAIN_DIGESTS)
    except OSError:
        return None
    except MlflowException as error:
        if error.error_code in NOT_FOUND:
            return None
        raise  # e.g. a locked registry: never read as "no record", which would favour the champion
    return set(Path(path).read_text().split())


def unseen_by(champion: ModelVersion | None, holdout: ImageSet) -> tuple[ImageSet, dict[str, str]]:
    """``holdout`` without the images ``champion`` trained on, and what was left out; warns
    when the champion kept no record of its training images."""
    if champion is None:
        return holdout, {}
    seen = trained_digests(champion)
    if seen is None:
        warnings.warn(f"champion version {champion.version} kept no record of its training images: the holdout may "
                      "include some, which favours the champion", stacklevel=2)
        return holdout, {"champion_training_record": "missing"}
    keep = np.flatnonzero([digest not in seen for digest in map(file_digest, holdout.manifest["path"])])
    if len(keep) == 0:
        raise DataError(f"the champion (version {champion.version}) trained on every holdout image: nothing "
                        "left to compare on")
    return holdout.subset(keep), {"champion_training_record": "present",
                                  "holdout_left_out_champion_trained": str(len(holdout) - len(keep))}


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding ``alias``, or None when no version holds it (any other registry error,
    e.g. a locked database, is raised: it must not read as "no champion")."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in NOT_FOUND:
            return None
        raise


def while_locked(call: Callable[[], T], wait_s: float, what: str) -> T:
    """``call()``, retried with backoff while a SQLite registry is locked by another writer (past
    SQLite's own 20 s busy timeout), for up to ``wait_s`` seconds. Other errors, also the other
    TEMPORARILY_UNAVAILABLE ones (a full disk, a read-only file), are raised at once. A tracking
    server retries its own 503s and then answers INTERNAL_ERROR, which is raised as it is."""
    deadline, delay = time.monotonic() + wait_s, 1.0
    while True:
        try:
            return call()
        except MlflowException as error:
            if error.error_code != "TEMPORARILY_UNAVAILABLE" or not any(text in str(error) for text in LOCKED):
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RegistryBusyError(f"the model registry stayed locked by another writer for over {wait_s:g} s "
                                        f"({what}); the champion is unchanged: run again once it is free") from error
            logger.warning("model registry locked by another writer (%s): retrying in %.0f s", what, delay)
            time.sleep(min(delay, remaining))
            delay = min(2 * delay, 30.0)


class PatientClient:
    """An MlflowClient whose every call waits out a registry locked by another writer (``while_locked``)."""

    def __init__(self, client: MlflowClient, wait_s: float):
        self.client, self.wait_s = client, wait_s

    def __getattr__(self, name: str):
        method = getattr(self.client, name)
        return lambda *args, **kwargs: while_locked(lambda: method(*args, **kwargs), self.wait_s, name)


def promotion_lock_path(registry_uri: str, name: str) -> Path | None:
    """Where promotions of ``name`` take their lock: beside a local SQLite store; None for a server."""
    if not registry_uri.startswith("sqlite:///"):
        return None
    database = Path(registry_uri.removeprefix("sqlite:///").split("?")[0])
    return database.with_name(f"{database.name}.promotion-{name}.lock")


@contextmanager
def promotion_lock(name: str, wait_s: float) -> Iterator[None]:
    """Hold the promotion lock of ``name`` (a no-op on a tracking server), waiting up to ``wait_s``."""
    path = promotion_lock_path(mlflow.get_registry_uri(), name)
    if path is None:
        yield
        return
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.warning("waiting for another run's promotion of %s to finish (lock %s)", name, path)
        try:
            lock.acquire(timeout=wait_s)
        except Timeout:
            raise RegistryBusyError(f"another promotion of {name!r} held {path} for over {wait_s:g} s; the "
                                    "champion is unchanged: run again once it ends") from None
    try:
        yield
    finally:
        lock.release()


def apply_decision(client: MlflowClient, name: str, version: int, decision: PromotionDecision,
                   evidence: dict[str, str] | None = None, champion: ModelVersion | None = None) -> str:
    """Move the aliases for ``decision`` (taken against ``champion``) and tag ``version`` with it and
    ``evidence`` (e.g. which set decided); returns the alias given. Should the ``champion`` move
    itself fail, ``previous_champion`` is put back where it was, so a rollback still has its target."""
    tags = {f"promotion_{k}": str(v) for k, v in (decision.as_dict() | (evidence or {})).items()}
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    if not decision.promote:
        client.set_registered_model_alias(name, CHALLENGER, str(version))
        return CHALLENGER
    if champion is None or int(champion.version) == version:
        client.set_registered_model_alias(name, CHAMPION, str(version))
        return CHAMPION
    previous = alias_version(client, name, PREVIOUS)
    client.set_registered_model_alias(name, PREVIOUS, str(champion.version))
    try:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    except Exception:
        if previous is None:
            client.delete_registered_model_alias(name, PREVIOUS)
        else:
            client.set_registered_model_alias(name, PREVIOUS, str(previous.version))
        raise
    return CHAMPION


def promote(client: MlflowClient, name: str, version: int, holdout: ImageSet, cfg: PromotionConfig,
            holdout_name: str = "val") -> tuple[str, PromotionDecision | None, int | None]:
    """Decide on ``version`` against the current champion on ``holdout`` (both scored as
    served), then move the aliases and tag the version with the holdout's name and content
    hash. Holdout images the champion trained on (by its record of file digests) are left out
    for both. Returns (alias, decision, champion version before).

    Every prediction and the decision come before the first registry write, so any failure
    leaves the previous champion in place. Under the promotion lock on a SQLite registry, so two
    runs promoting at once take turns; on a tracking server, decided again should the champion
    move meanwhile (a window of a few calls remains there between that check and the alias move).
    """
    client = PatientClient(client, cfg.registry_wait_s)
    with promotion_lock(name, cfg.registry_wait_s):
        for _ in range(3):
            champion = alias_version(client, name, CHAMPION)
            if version_of(champion) == version:
                return CHAMPION, None, version
            decision, evidence = decide_against(client, name, version, champion, holdout, cfg, holdout_name)
            moved_to = version_of(alias_version(client, name, CHAMPION))
            if moved_to == version_of(champion):
                break
            logger.warning("the champion of %s moved to version %s while version %d was being decided: deciding "
                           "again", name, moved_to, version)
        else:
            raise RegistryBusyError(f"the champion of {name!r} moved three times while version {version} was being "
                                    "decided; no alias was moved: run again")
        alias = apply_decision(client, name, version, decision, evidence, champion)
    return alias, decision, version_of(champion)


def version_of(model_version: ModelVersion | None) -> int | None:
    return None if model_version is None else int(model_version.version)


def decide_against(client: PatientClient, name: str, version: int, champion: ModelVersion | None,
                   holdout: ImageSet, cfg: PromotionConfig, holdout_name: str) -> tuple[PromotionDecision, dict]:
    """The decision on ``version`` against ``champion`` on ``holdout``, and its evidence tags."""
    hash_before = holdout.content_hash()
    holdout, record = unseen_by(champion, holdout)

    def score(scored_version: int | str) -> pd.DataFrame:
        return while_locked(lambda: registry_predictions(name, str(scored_version), holdout), cfg.registry_wait_s,
                            f"scoring version {scored_version}")

    scored = score(version)
    labels = [column for column in scored.columns if column != "id"]
    y, mask = part_labels(holdout, labels)
    old = None if champion is None else score(champion.version)[labels].to_numpy()
    decision = decide(y, mask, scored[labels].to_numpy(), old, cfg)
    return decision, {"holdout": holdout_name, "holdout_hash": hash_before, "holdout_images": len(holdout), **record}


def rollback(client: MlflowClient, name: str, wait_s: float = 600) -> tuple[int, int | None]:
    """Give ``champion`` back to the ``previous_champion`` version; returns (restored, demoted),
    demoted None when no version held ``champion`` (e.g. its alias or version was deleted).
    Under the promotion lock, waiting out a locked registry like a promotion."""
    client = PatientClient(client, wait_s)
    with promotion_lock(name, wait_s):
        previous, champion = alias_version(client, name, PREVIOUS), alias_version(client, name, CHAMPION)
        if previous is None:
            raise ValueError(f"registered model {name!r} has no {PREVIOUS!r} alias: nothing to roll back to")
        client.set_registered_model_alias(name, CHAMPION, str(previous.version))
        client.delete_registered_model_alias(name, PREVIOUS)
        if champion is not None:
            client.set_registered_model_alias(name, CHALLENGER, str(champion.version))
            client.set_model_version_tag(name, str(champion.version), "rolled_back", "true")
    return int(previous.version), None if champion is None else int(champion.version)
