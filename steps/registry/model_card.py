"""model_card step and ``registered_card``: the HTML model card of a registered version, drawn
from what the version stored in MLflow (tags, run metrics, trust and robustness tables, plots,
the served checkpoint's metadata), so ``run.py card`` writes the same page for any version."""

import json
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import mlflow
import pandas as pd
from mlflow import MlflowClient
from zenml import step
from zenml.logger import get_logger
from zenml.types import HTMLString

from cxr.data.imageset import ImageSet
from cxr.infer.ensemble import EnsembleModel
from cxr.lifecycle.model_card import card_context, error_gallery, render_model_card, training_summary
from cxr.metrics.generalisation import scored_part
from cxr.models.checkpoint import Checkpoint
from steps.registry.lifecycle import served_model

logger = get_logger(__name__)

CARD_FILE = "model_card.html"
TABLES = {"calibration": "trust/calibration.csv", "operating_points": "trust/operating_points.csv",
          "intervals": "trust/intervals.csv", "subgroups": "trust/subgroups.csv", "robustness": "robustness/table.csv"}
IMAGES = {"reliability": "plots/reliability.png", "robustness": "plots/robustness.png",
          "gallery": "model_card/gallery.png"}
RECORDS = {"data": "model_card/data.json", "knobs": "model_card/knobs.json"}


def _artifact(run_id: str, path: str, folder: str) -> Path | None:
    """A run artifact downloaded into ``folder``, or None when the run has none at ``path``."""
    listed = {a.path for a in MlflowClient().list_artifacts(run_id, str(Path(path).parent))}
    if path not in listed:
        return None
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=folder))


def registered_card(name: str, version: int) -> str:
    """The model card HTML of version ``version`` of registered model ``name``."""
    client = MlflowClient()
    record = client.get_model_version(name, str(version))
    run = client.get_run(record.run_id)
    model = served_model(f"models:/{name}/{version}")
    first = next(iter(model.members.values())) if isinstance(model, EnsembleModel) else model
    with tempfile.TemporaryDirectory() as folder:
        files = {kind: {key: _artifact(record.run_id, path, folder) for key, path in paths.items()}
                 for kind, paths in (("tables", TABLES), ("images", IMAGES), ("records", RECORDS))}
        tables = {key: pd.read_csv(path) if path else None for key, path in files["tables"].items()}
        images = {key: path.read_bytes() if path else None for key, path in files["images"].items()}
        records = {key: json.loads(path.read_text()) if path else None for key, path in files["records"].items()}
    return render_model_card(card_context(
        name, int(version), sorted(record.aliases), record.tags, run.data.metrics, first.meta.model_dump(),
        list(model.members) if isinstance(model, EnsembleModel) else [], records["data"], records["knobs"],
        tables, images))


@step(experiment_tracker=True, enable_cache=False)
def model_card(model_version: int, registered_model_name: str, checkpoint: Checkpoint, images: ImageSet,
               val_predictions: pd.DataFrame, data_source: dict, knobs: dict,
               promotion: Optional[dict] = None) -> Annotated[HTMLString, "model_card"]:
    """Write the model card of the new version (after promotion, when there is one, so that it
    shows the decision): log the training summary, the knobs and a Grad-CAM gallery of val's
    most confident errors to the version's MLflow run, then render the card from what the
    version stored and log it there as ``model_card.html``. Never cached: aliases move.
    ``run.py card --name N --version V`` renders the same page later."""
    client = MlflowClient()
    run_id = client.get_model_version(registered_model_name, str(model_version)).run_id
    val = images.split("val")
    probs = scored_part(val, val_predictions, list(checkpoint.meta.label_names), "val")
    gallery = error_gallery(checkpoint, val, probs)
    if gallery is not None:
        client.log_image(run_id, gallery, artifact_file=IMAGES["gallery"])
    client.log_text(run_id, json.dumps(training_summary(images, data_source), indent=2, default=str), RECORDS["data"])
    client.log_text(run_id, json.dumps(knobs, indent=2, default=str), RECORDS["knobs"])
    html = registered_card(registered_model_name, model_version)
    client.log_text(run_id, html, CARD_FILE)
    logger.info("model card of %s version %d logged as %s (%d KB)", registered_model_name, model_version, CARD_FILE,
                len(html) // 1024)
    return HTMLString(html)
