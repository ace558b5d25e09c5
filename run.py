"""Project CLI: set up the local ZenML stack, run the pipelines, find the results.

    python run.py setup                              # idempotent: MLflow tracker + registry stack
    python run.py train [--config zenml_config.yaml]  # setup, then one pipeline run
    python run.py mlflow-ui                          # MLflow UI on this stack's tracking store
    python run.py info                               # tracking URI, stack, latest run
    python run.py infer [--config configs/inference.yaml]  # new images through the registry's champion
    python run.py ensemble [--config configs/ensemble.yaml]  # several backbones -> one registered ensemble
    python run.py rollback [--name cxr-pneumonia]    # champion alias back to the previous champion
    python run.py card [--name cxr-pneumonia] [--version V] [--out CARD.html]  # a version's model card
    python run.py serve [--name cxr-pneumonia] [--alias champion | --version V] [--port 5001] [--backend onnx]
    python run.py export --format onnx [--name cxr-pneumonia] [--alias champion | --version V] [--out DIR] [--log]
    python run.py predict IMAGE_OR_FOLDER [--checkpoint DIR | --artifact cft_checkpoint]
                          [--gradcam OUT_DIR --top 3] [--tta] [--csv OUT.csv]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import traceback

from cxr.errors import ConfigError, DataError, NotRegisteredError, RegistryBusyError, RequestError
from cxr.lifecycle import DEFAULT_MODEL_NAME
from pipelines.runner import (PIPELINES, export, info, predict, rollback, run_pipeline, serve, setup_stack,
                              tracking_uri, write_card)


def report_rollback(name: str) -> int:
    """Roll ``name`` back and say what moved; a refusal goes to stderr with exit status 1."""
    try:
        restored, demoted = rollback(name)
    except ValueError as error:
        print(f"rollback refused: {error}", file=sys.stderr)
        return 1
    moved = f"version {demoted} is now challenger" if demoted is not None else "no version held champion to demote"
    print(f"{name}: champion is version {restored} again; {moved}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The CLI's commands and options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of a config or data error")
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
    back.add_argument("--name", default=DEFAULT_MODEL_NAME, help="registered model name")
    card = commands.add_parser("card", help="write the HTML model card of a registered version")
    card.add_argument("--name", default=DEFAULT_MODEL_NAME, help="registered model name")
    card.add_argument("--version", type=int, help="registered version (default: the champion, else the latest)")
    card.add_argument("--out", help="HTML file to write (default: outputs/model_card_<name>_v<version>.html)")
    srv = commands.add_parser("serve", help="serve a registered version over HTTP (MLflow's request format)")
    srv.add_argument("--name", default=DEFAULT_MODEL_NAME, help="registered model name")
    which = srv.add_mutually_exclusive_group()
    which.add_argument("--alias", default="champion", help="serve the version holding this alias")
    which.add_argument("--version", type=int, help="serve this version")
    srv.add_argument("--host", default="127.0.0.1",
                     help="interface to bind (default loopback; on a network, put a TLS proxy with auth in front)")
    srv.add_argument("--port", type=int, default=5001)
    srv.add_argument("--max-body-mb", type=float, default=64, help="larger request bodies get HTTP 413")
    srv.add_argument("--max-images", type=int, default=64, help="requests with more rows get HTTP 413")
    srv.add_argument("--max-pending", type=int, default=32, help="requests in flight beyond this get HTTP 503")
    srv.add_argument("--allow-paths", action="store_true",
                     help="also score 'path' rows: files on the server (off: images come as bytes only)")
    srv.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                     help="run the network in torch, or export it at start and run it on onnxruntime")
    exp = commands.add_parser("export", help="export a registered version (ONNX, normalisation inside the graph)")
    exp.add_argument("--format", choices=["onnx"], default="onnx")
    exp.add_argument("--name", default=DEFAULT_MODEL_NAME, help="registered model name")
    version_of = exp.add_mutually_exclusive_group()
    version_of.add_argument("--alias", default="champion", help="export the version holding this alias")
    version_of.add_argument("--version", type=int, help="export this version")
    exp.add_argument("--out", help="folder to write (default: outputs/onnx/<name>_v<version>)")
    exp.add_argument("--static-batch", type=int, metavar="N", help="fix the batch dimension to N (default: dynamic)")
    exp.add_argument("--log", action="store_true", help="also log the export as the version's onnx/ artifact")
    pred = commands.add_parser("predict", help="per-finding probabilities of an image or folder")
    pred.add_argument("target", help="an image file or a folder of images")
    pred.add_argument("--checkpoint", help="checkpoint folder (model.safetensors + meta.json)")
    pred.add_argument("--artifact", default="calibrated_checkpoint",
                      help="else the latest ZenML artifact of this name (calibrated_checkpoint: what is registered, "
                           "calibrated; checkpoint: as fine-tuned; cft_checkpoint)")
    pred.add_argument("--tta", action="store_true", help="average the five reference TTA views")
    pred.add_argument("--gradcam", metavar="OUT_DIR", help="write Grad-CAM overlays of the top findings here")
    pred.add_argument("--top", type=int, default=3, help="findings per Grad-CAM image")
    pred.add_argument("--csv", help="also write the probabilities to this CSV")
    return parser


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; returns the exit status."""
    if args.command == "setup":
        print(f"active stack: {setup_stack()}; MLflow tracking URI: {tracking_uri()}")
    elif args.command in PIPELINES:
        run = run_pipeline(args.command, args.config, args.run_name, args.debug)
        print(f"pipeline run {run.name}: {run.status}; MLflow tracking URI: {tracking_uri()}")
    elif args.command == "mlflow-ui":
        setup_stack()
        return subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(),
                                "--port", args.port])
    elif args.command == "rollback":
        return report_rollback(args.name)
    elif args.command == "card":
        print(f"model card written to {write_card(args.name, args.version, args.out)}")
    elif args.command == "serve":
        serve(args.name, args.alias, args.version, args.host, args.port, args.max_body_mb, args.max_images,
              args.backend, args.allow_paths, args.max_pending)
    elif args.command == "export":
        folder = export(args.name, args.alias, args.version, args.out, args.static_batch is None,
                        args.static_batch or 1, args.log)
        print(f"ONNX export written to {folder}")
    elif args.command == "predict":
        predict(args.target, args.checkpoint, args.artifact, args.tta, args.gradcam, args.top, args.csv)
    elif args.command == "info":
        print(info())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), run one command; returns the exit status: 2 for a
    config error, 1 for bad data, a missing model or a registry kept locked, each one line on stderr
    (``--debug``: the traceback)."""
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except (ConfigError, DataError, RequestError, NotRegisteredError, RegistryBusyError,
            FileNotFoundError) as error:
        if args.debug:
            traceback.print_exc()
        config_error = isinstance(error, ConfigError)
        print(error if config_error else f"error: {error}", file=sys.stderr)
        return 2 if config_error else 1


if __name__ == "__main__":
    sys.exit(main())
