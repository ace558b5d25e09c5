"""Ensemble benchmark on Kermany: three backbone families as branches of the ensemble pipeline.

    python bench/ensemble.py --out outputs/ensemble [--config configs/ensemble.yaml]

Runs in a fresh, temporary ZenML/MLflow home and prints one JSON line per member (val AUC,
weight or why it was dropped, wall seconds of its fine-tune and TTA steps) and one for the
ensemble (val AUC, wall time). The test-set submission lands in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HOME = Path(tempfile.mkdtemp(prefix="cxr-ensemble-"))
os.environ.update(ZENML_CONFIG_PATH=str(HOME / "zen"), ZENML_REPOSITORY_PATH=str(HOME / "repo"),
                  ZENML_ANALYTICS_OPT_IN="false", MLFLOW_DISABLE_TELEMETRY="true")
(HOME / "repo").mkdir()

import yaml  # noqa: E402


def seconds(run, name: str) -> float:
    step = run.steps[name]
    return round((step.end_time - step.start_time).total_seconds(), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--config", default=str(REPO / "configs" / "ensemble.yaml"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(Path(args.config).read_text())
    config["parameters"]["submission_path"] = str(args.out.resolve() / "submission.csv")
    path = HOME / "ensemble.yaml"
    path.write_text(yaml.safe_dump(config))

    from zenml.client import Client
    from zenml.utils import source_utils

    import run as cli
    from pipelines.ensemble import ensemble_pipeline

    source_utils.set_custom_source_root(str(REPO))
    cli.setup_stack()
    started = time.perf_counter()
    run = Client().get_pipeline_run(ensemble_pipeline.with_options(config_path=str(path), run_name="bench")().id)
    wall = time.perf_counter() - started
    report = run.steps["ensemble_predictions"].outputs["ensemble_report"][0].load()
    for member in config["parameters"]["members"]:
        name = member["name"]
        row = report.set_index("member").loc[name]
        print(json.dumps({"bench": "ensemble_member", "member": name, "backbone": member["model"]["backbone"],
                          "val_auc": round(float(row["val_auc"]), 4), "weight": round(float(row["weight"]), 4),
                          "dropped": row["dropped"], "finetune_s": seconds(run, f"finetune_{name}"),
                          "tta_s": round(seconds(run, f"tta_val_{name}") + seconds(run, f"tta_test_{name}"), 1)}),
              flush=True)
    ensemble_auc = float(report.set_index("member").loc["ensemble", "val_auc"])
    print(json.dumps({"bench": "ensemble", "val_auc": round(ensemble_auc, 4),
                      "weighting": config["parameters"].get("ensemble", {}).get("weighting", "auc"),
                      "wall_s": round(wall, 1), "submission": config["parameters"]["submission_path"],
                      "cores": os.cpu_count()}), flush=True)


if __name__ == "__main__":
    main()
