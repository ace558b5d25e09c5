"""Project CLI: set up the local ZenML stack, run the training pipeline, find the results.

    python run.py setup                              # idempotent: MLflow tracker + registry stack
    python run.py train [--config zenml_config.yaml]  # setup, then one pipeline run
    python run.py mlflow-ui                          # MLflow UI on this stack's tracking store
    python run.py info                               # tracking URI, stack, latest run
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


def train(config: str, run_name: str | None = None):
    """Run the training pipeline with a YAML config; returns the pipeline run.

    The source root is pinned to this folder, so step sources and the core files that
    cache keys hash resolve the same way from any caller (CLI, pytest, notebooks).
    """
    from zenml.utils import source_utils

    from pipelines.training import training_pipeline

    source_utils.set_custom_source_root(str(REPO_ROOT))
    setup_stack()
    name = run_name or f"train-{os.path.splitext(os.path.basename(config))[0]}-{datetime.now():%Y%m%d-%H%M%S}"
    return training_pipeline.with_options(config_path=config, run_name=name)()


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
    args = parser.parse_args(argv)

    if args.command == "setup":
        print(f"active stack: {setup_stack()}; MLflow tracking URI: {tracking_uri()}")
    elif args.command == "train":
        run = train(args.config, args.run_name)
        print(f"pipeline run {run.name}: {run.status}; MLflow tracking URI: {tracking_uri()}")
    elif args.command == "mlflow-ui":
        setup_stack()
        return subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(),
                                "--port", args.port])
    elif args.command == "info":
        from zenml.client import Client

        setup_stack()
        runs = Client().list_pipeline_runs(sort_by="desc:created", size=1).items
        print(f"stack: {STACK}\nMLflow tracking URI: {tracking_uri()}")
        print(f"latest run: {runs[0].name} ({runs[0].status})" if runs else "no runs yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
