"""Project CLI: set up the local ZenML stack, run the pipelines, find the results.

    python run.py setup                              # idempotent: MLflow tracker + registry stack
    python run.py train [--config zenml_config.yaml]  # setup, then one pipeline run
    python run.py mlflow-ui                          # MLflow UI on this stack's tracking store
    python run.py info                               # tracking URI, stack, latest run
    python run.py infer [--config configs/inference.yaml]  # new images through the registry's champion
    python run.py ensemble [--config configs/ensemble.yaml]  # several backbones -> one registered ensemble
    python run.py rollback [--name cxr-pneumonia]    # champion alias back to the previous champion
    python run.py predict IMAGE_OR_FOLDER [--checkpoint DIR | --artifact cft_checkpoint]
                          [--gradcam OUT_DIR --top 3] [--tta] [--csv OUT.csv]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO_ROOT = Path(__file__).resolve().parent
STACK = "cxr_local"
TRACKER = "cxr_mlflow_tracker"
REGISTRY = "cxr_mlflow_registry"


def setup_stack(activate: bool = True) -> str:
    """Create (once) the local stack: default orchestrator and artifact store, MLflow experiment
    tracker and model registry on a SQLite backend in the artifact store. Returns its name."""
    from zenml.client import Client
    from zenml.enums import StackComponentType as T

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


PIPELINES = {"train": ("pipelines.training", "training_pipeline"),
             "ensemble": ("pipelines.ensemble", "ensemble_pipeline"),
             "infer": ("pipelines.inference", "inference_pipeline")}


def run_pipeline(command: str, config: str, run_name: str | None = None):
    """Run the pipeline behind ``command`` (train, ensemble, infer) with a YAML config; returns
    the pipeline run.

    The source root is pinned to this folder, so step sources and the core files that
    cache keys hash resolve the same way from any caller (CLI, pytest, notebooks).
    """
    import importlib

    from zenml.utils import source_utils

    module, attribute = PIPELINES[command]
    pipeline = getattr(importlib.import_module(module), attribute)
    source_utils.set_custom_source_root(str(REPO_ROOT))
    setup_stack()
    name = run_name or f"{command}-{os.path.splitext(os.path.basename(config))[0]}-{datetime.now():%Y%m%d-%H%M%S}"
    return pipeline.with_options(config_path=config, run_name=name)()


def train(config: str, run_name: str | None = None):
    """Run the training pipeline with a YAML config; returns the pipeline run."""
    return run_pipeline("train", config, run_name)


def infer(config: str, run_name: str | None = None):
    """Run the inference pipeline with a YAML config; returns the pipeline run."""
    return run_pipeline("infer", config, run_name)


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
    """Per-finding probabilities of one image or every image in a folder; optional Grad-CAM PNGs."""
    import pandas as pd

    from cxr.data.sources import list_images
    from cxr.infer.explain import write_overlays
    from cxr.infer.serving import preprocess_files
    from cxr.infer.tta import REFERENCE_VIEWS, predict_imageset

    path = Path(target)
    if not path.exists():
        raise FileNotFoundError(f"no image or folder at {path}")
    files = list_images(path) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no images (.png, .jpg, ...) in {path}")
    checkpoint = load_model(checkpoint_dir, artifact)
    images = preprocess_files(checkpoint, [str(f) for f in files], [f.name for f in files])
    probs = predict_imageset(checkpoint, images, REFERENCE_VIEWS if tta else ("original",))
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(probs.set_index("id").T.round(4).to_string() if len(files) == 1 else probs.round(4).to_string(index=False))
    if csv:
        probs.to_csv(csv, index=False)
    if gradcam:
        values = probs[list(checkpoint.meta.label_names)].to_numpy()
        for i, name in enumerate(images.ids):
            out = write_overlays(checkpoint, images.images[i], values[i], Path(gradcam) / f"{Path(name).stem}_gradcam.png",
                                 top)
            print(f"Grad-CAM: {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("setup", help="create and activate the local MLflow stack (idempotent)")
    train_cmd = commands.add_parser("train", help="run the training pipeline")
    train_cmd.add_argument("--config", "-c", default="zenml_config.yaml")
    train_cmd.add_argument("--run-name")
    ui = commands.add_parser("mlflow-ui", help="serve the MLflow UI for this stack")
    ui.add_argument("--port", default="5000")
    commands.add_parser("info", help="print the stack, tracking URI and latest run")
    infer_cmd = commands.add_parser("infer", help="run the inference pipeline with a registered model")
    infer_cmd.add_argument("--config", "-c", default="configs/inference.yaml")
    infer_cmd.add_argument("--run-name")
    ensemble_cmd = commands.add_parser("ensemble", help="train, ensemble, register and promote several backbones")
    ensemble_cmd.add_argument("--config", "-c", default="configs/ensemble.yaml")
    ensemble_cmd.add_argument("--run-name")
    back = commands.add_parser("rollback", help="give the champion alias back to the previous champion")
    back.add_argument("--name", default="cxr-pneumonia", help="registered model name")
    pred = commands.add_parser("predict", help="per-finding probabilities of an image or folder")
    pred.add_argument("target", help="an image file or a folder of images")
    pred.add_argument("--checkpoint", help="checkpoint folder (model.safetensors + meta.json)")
    pred.add_argument("--artifact", default="checkpoint",
                      help="else the latest ZenML artifact of this name (checkpoint, cft_checkpoint)")
    pred.add_argument("--tta", action="store_true", help="average the five reference TTA views")
    pred.add_argument("--gradcam", metavar="OUT_DIR", help="write Grad-CAM overlays of the top findings here")
    pred.add_argument("--top", type=int, default=3, help="findings per Grad-CAM image")
    pred.add_argument("--csv", help="also write the probabilities to this CSV")
    args = parser.parse_args(argv)

    if args.command == "setup":
        print(f"active stack: {setup_stack()}; MLflow tracking URI: {tracking_uri()}")
    elif args.command in PIPELINES:
        run = run_pipeline(args.command, args.config, args.run_name)
        print(f"pipeline run {run.name}: {run.status}; MLflow tracking URI: {tracking_uri()}")
    elif args.command == "mlflow-ui":
        setup_stack()
        return subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(),
                                "--port", args.port])
    elif args.command == "rollback":
        import mlflow

        from steps.registry.lifecycle import rollback

        setup_stack()
        mlflow.set_tracking_uri(tracking_uri())
        try:
            restored, demoted = rollback(mlflow.MlflowClient(), args.name)
        except ValueError as error:
            print(f"rollback refused: {error}", file=sys.stderr)
            return 1
        print(f"{args.name}: champion is version {restored} again; version {demoted} is now challenger")
    elif args.command == "predict":
        predict(args.target, args.checkpoint, args.artifact, args.tta, args.gradcam, args.top, args.csv)
    elif args.command == "info":
        from zenml.client import Client

        setup_stack()
        runs = Client().list_pipeline_runs(sort_by="desc:created", size=1).items
        print(f"stack: {STACK}\nMLflow tracking URI: {tracking_uri()}")
        print(f"latest run: {runs[0].name} ({runs[0].status})" if runs else "no runs yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
