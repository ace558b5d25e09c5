"""What the CLI, tests and benches call: the local stack, pipeline runs, the registry's aliases,
and checkpoint predictions.

zenml and mlflow are imported inside the functions (``import zenml`` costs seconds), so
importing this module is cheap and ``fresh_home`` can still redirect ZenML afterwards.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from cxr.errors import ConfigError, DataError, NotRegisteredError, RegistryBusyError

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]
STACK = "cxr_local"
TRACKER = "cxr_mlflow_tracker"
REGISTRY = "cxr_mlflow_registry"
PIPELINES = {"train": ("pipelines.training", "training_pipeline"),
             "ensemble": ("pipelines.ensemble", "ensemble_pipeline"),
             "infer": ("pipelines.inference", "inference_pipeline")}


def fresh_home(prefix: str) -> Path:
    """Point ZenML (config and repository) at a new temporary home, offline, so a benchmark
    measures a cold run and never touches the user's store. Call before zenml is imported."""
    if "zenml" in sys.modules:
        raise RuntimeError("fresh_home must be called before zenml is imported: ZenML reads its home once")
    home = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update(ZENML_CONFIG_PATH=str(home / "zen"), ZENML_REPOSITORY_PATH=str(home / "repo"),
                      ZENML_ANALYTICS_OPT_IN="false", MLFLOW_DISABLE_TELEMETRY="true")
    (home / "repo").mkdir()
    return home


def setup_stack(activate: bool = True) -> str:
    """Create (once) the local stack: default orchestrator and artifact store, MLflow experiment
    tracker and model registry on a SQLite backend in the artifact store. Returns its name."""
    from zenml.client import Client
    from zenml.enums import StackComponentType as T
    from zenml.utils import source_utils

    source_utils.set_custom_source_root(str(REPO_ROOT))  # flavors load by source, also where __main__ has no file
    client = Client()
    existing = {c.name for c in client.list_stack_components(size=1000).items}
    for name, kind in ((TRACKER, T.EXPERIMENT_TRACKER), (REGISTRY, T.MODEL_REGISTRY)):
        if name not in existing:
            client.create_stack_component(name=name, flavor="mlflow", component_type=kind, configuration={})
    if STACK not in {s.name for s in client.list_stacks(size=1000).items}:
        default = client.get_stack("default")
        client.create_stack(STACK, components={
            T.ORCHESTRATOR: default.components[T.ORCHESTRATOR][0].name,
            T.ARTIFACT_STORE: default.components[T.ARTIFACT_STORE][0].name,
            T.EXPERIMENT_TRACKER: TRACKER, T.MODEL_REGISTRY: REGISTRY})
    if activate and client.active_stack_model.name != STACK:
        client.activate_stack(STACK)
    return STACK


def tracking_uri() -> str:
    """The MLflow tracking URI of the active stack's experiment tracker."""
    from zenml.client import Client

    return Client().active_stack.experiment_tracker.get_tracking_uri()


def pipeline_of(command: str):
    """The ZenML pipeline behind a CLI ``command`` (train, ensemble, infer)."""
    module, attribute = PIPELINES[command]
    return getattr(importlib.import_module(module), attribute)


def run_pipeline(command: str, config: str, run_name: str | None = None, debug: bool = False):
    """Run the pipeline behind ``command`` (train, ensemble, infer) with a YAML config, checked whole
    first (a ConfigError names the file and key); returns the pipeline run. A step that fails with a
    DataError raises it here, naming the step, and is logged without its traceback unless ``debug``.

    The source root is pinned to the repository root, so step sources and the core files that
    cache keys hash resolve the same way from any caller (CLI, pytest, notebooks).
    """
    from zenml.utils import source_utils

    from pipelines.config_check import check_config

    pipeline = pipeline_of(command)
    check_config(pipeline, config)
    if not debug:
        quiet_known_errors()
    source_utils.set_custom_source_root(str(REPO_ROOT))
    setup_stack()
    name = run_name or f"{command}-{os.path.splitext(os.path.basename(config))[0]}-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        return pipeline.with_options(config_path=config, run_name=name)()
    except RuntimeError as error:
        raise failed_step_error(name) or error


KNOWN_ERRORS = {f"cxr.errors.{cls.__name__}": cls for cls in (DataError, ConfigError, RegistryBusyError)}


def failed_step_error(run_name: str) -> Exception | None:
    """The cxr error (DataError, RegistryBusyError, ...) that failed a step of run ``run_name``, as
    that class with the step named, from ZenML's record of the step; None when no step failed with one."""
    from zenml.client import Client

    for step_name, step in Client().get_pipeline_run(run_name).steps.items():
        info = step.exception_info
        if str(step.status.value) == "failed" and info is not None and info.source in KNOWN_ERRORS:
            if KNOWN_ERRORS[info.source] is ConfigError:
                return ConfigError(f"step {step_name}", info.message)
            return KNOWN_ERRORS[info.source](f"step {step_name}: {info.message}")
    return None


class KnownErrorTracebacks(logging.Filter):
    """Drops the traceback from log records of a known error (DataError, ...): its message says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        kind = record.exc_info[0] if record.exc_info else None
        if kind is not None and issubclass(kind, tuple(KNOWN_ERRORS.values())):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_known_errors() -> None:
    """Log known errors without their traceback on every root handler (ZenML's console among them), once."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, KnownErrorTracebacks) for f in handler.filters):
            handler.addFilter(KnownErrorTracebacks())


def train(config: str, run_name: str | None = None):
    """Run the training pipeline with a YAML config; returns the pipeline run."""
    return run_pipeline("train", config, run_name)


def infer(config: str, run_name: str | None = None):
    """Run the inference pipeline with a YAML config; returns the pipeline run."""
    return run_pipeline("infer", config, run_name)


def info() -> str:
    """The stack, its MLflow tracking URI and the latest pipeline run, as printed by ``run.py info``."""
    from zenml.client import Client

    setup_stack()
    runs = Client().list_pipeline_runs(sort_by="desc:created", size=1).items
    latest = f"latest run: {runs[0].name} ({runs[0].status})" if runs else "no runs yet"
    return f"stack: {STACK}\nMLflow tracking URI: {tracking_uri()}\n{latest}"


def rollback(name: str) -> tuple[int, int | None]:
    """Give ``name``'s champion alias back to its previous champion on the local stack's registry;
    returns (restored, demoted or None). Raises ValueError when there is nothing to roll back to."""
    import mlflow

    from steps.registry.lifecycle import rollback as rollback_aliases

    setup_stack()
    mlflow.set_tracking_uri(tracking_uri())
    return rollback_aliases(mlflow.MlflowClient(), name)


def write_card(name: str, version: int | None = None, out: str | None = None) -> Path:
    """Write the model card of ``name``'s ``version`` (default: the champion, else the latest
    version) to ``out``; returns the path."""
    import mlflow

    from steps.registry.lifecycle import CHAMPION, alias_version
    from steps.registry.model_card import registered_card

    setup_stack()
    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.MlflowClient()
    if version is None:
        champion = alias_version(client, name, CHAMPION)
        versions = client.search_model_versions(f"name='{name}'")
        if champion is None and not versions:
            raise NotRegisteredError(f"registered model {name!r} has no versions")
        version = int(champion.version) if champion else max(int(v.version) for v in versions)
    path = Path(out or f"outputs/model_card_{name}_v{version}.html")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(registered_card(name, version), encoding="utf-8")
    return path.resolve()


def registered(name: str, alias: str = "champion", version: int | None = None):
    """(version, checkpoint or ensemble) of ``name``'s ``version``, else of the version holding ``alias``."""
    import mlflow

    from steps.registry.lifecycle import alias_version, served_model

    setup_stack()
    mlflow.set_tracking_uri(tracking_uri())
    if version is None:
        held = alias_version(mlflow.MlflowClient(), name, alias)
        if held is None:
            raise NotRegisteredError(f"registered model {name!r} has no version with alias {alias!r}")
        version = int(held.version)
    return version, served_model(f"models:/{name}/{version}")


def export(name: str, alias: str = "champion", version: int | None = None, out: str | None = None,
           dynamic_batch: bool = True, batch: int = 1, log: bool = False) -> Path:
    """Export a registered version as ONNX (``cxr.infer.onnx``) into ``out``; with ``log`` also as
    the version's ``onnx/`` artifact. Returns the folder."""
    from cxr.infer.onnx import export_model

    version, model = registered(name, alias, version)
    folder = export_model(model, Path(out or f"outputs/onnx/{name}_v{version}"), dynamic_batch, batch)
    if log:
        import mlflow

        client = mlflow.MlflowClient()
        run_id = client.get_model_version(name, str(version)).run_id
        client.log_artifacts(run_id, str(folder), "onnx")
        client.set_model_version_tag(name, str(version), "onnx", "onnx/")
    return folder.resolve()


def serve(name: str, alias: str = "champion", version: int | None = None, host: str = "127.0.0.1", port: int = 5001,
          max_body_mb: float = 64, max_images: int = 64, backend: str = "torch", allow_paths: bool = False,
          max_pending: int = 32) -> None:
    """Serve ``name``'s ``version`` (default: the version holding ``alias``) over HTTP until
    stopped: MLflow's request format on ``/invocations`` (``cxr.infer.http``), images as base64
    bytes (server file paths only with ``allow_paths``), loopback unless ``host`` says otherwise.
    ``backend`` onnx runs the networks on onnxruntime, exported at start."""
    import uvicorn

    from cxr.infer.http import MEGABYTE, create_app
    from cxr.infer.onnx import export_model, onnx_backed
    from cxr.infer.serving import predict_request, served_labels

    version, model = registered(name, alias, version)
    if backend == "onnx":
        model = onnx_backed(model, export_model(model, Path(tempfile.mkdtemp(prefix="cxr-onnx-"))))
    info = {"name": name, "version": version, "labels": served_labels(model), "backend": backend,
            "max_images": max_images, "max_body_bytes": int(max_body_mb * MEGABYTE)}
    app = create_app(lambda frame, params: predict_request(model, frame, params, allow_paths=allow_paths), info,
                     int(max_body_mb * MEGABYTE), max_images, max_pending)
    print(f"serving {name} version {version} on http://{host}:{port}/invocations", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=5)


def load_model(checkpoint_dir: str | None, artifact: str):
    """A checkpoint folder (model.safetensors + meta.json), else the latest ZenML artifact ``artifact``."""
    from cxr.models.checkpoint import load_checkpoint

    if checkpoint_dir:
        return load_checkpoint(checkpoint_dir)
    from zenml.client import Client

    import materializers  # noqa: F401  (registers the Checkpoint materializer)

    setup_stack()
    return Client().get_artifact_version(artifact).load()


def predict(target: str, checkpoint_dir: str | None, artifact: str, tta: bool, gradcam: str | None, top: int,
            csv: str | None):
    """Per-finding probabilities of one image or every image (or DICOM file) in a folder, with the
    guardrails' flag and reason; optional Grad-CAM PNGs."""
    import pandas as pd

    from cxr.data.sources import list_images
    from cxr.infer.explain import write_overlays
    from cxr.infer.guardrails import flagged_predictions, guard, guardrail_config
    from cxr.infer.serving import preprocess_files
    from cxr.infer.tta import REFERENCE_VIEWS, SINGLE_VIEW, predict_imageset

    path = Path(target)
    if not path.exists():
        raise DataError(f"no image or folder at {path}")
    files = list_images(path) if path.is_dir() else [path]
    if not files:
        raise DataError(f"no images (.png, .jpg, ...) in {path}")
    checkpoint = load_model(checkpoint_dir, artifact)
    images = preprocess_files(checkpoint, [str(f) for f in files], [f.name for f in files])
    labels = list(checkpoint.meta.label_names)
    probs = flagged_predictions(predict_imageset(checkpoint, images, REFERENCE_VIEWS if tta else SINGLE_VIEW),
                                guard(checkpoint, images), labels, guardrail_config(checkpoint).reject)
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(probs.set_index("id").T.round(4).to_string() if len(files) == 1 else probs.round(4).to_string(index=False))
    if csv:
        probs.to_csv(csv, index=False)
    if gradcam:
        values = probs[labels].to_numpy()
        for i, name in enumerate(images.ids):
            out = write_overlays(checkpoint, images.images[i], values[i], Path(gradcam) / f"{Path(name).stem}_gradcam.png",
                                 top)
            print(f"Grad-CAM: {out}")
