"""Ensemble benchmark on Kermany: three backbone families as branches of the ensemble pipeline.

    python bench/ensemble.py --out outputs/ensemble [--config configs/ensemble.yaml]

Runs in a fresh, temporary ZenML/MLflow home and prints one JSON line per member (val AUC,
weight or why it was dropped, wall seconds of its fine-tune and TTA steps) and one for the
ensemble (val AUC, wall time). Then, from the same members' val predictions, one line per
weighting, with the config's member selection and with all members kept: in-sample and
2-fold patient cross-fitted val AUC, and the cross-fitted ensemble minus the best member with
a 95% paired-bootstrap interval. The submission lands in --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import yaml

from pipelines import runner as cli

HOME = cli.fresh_home("cxr-ensemble-")


def seconds(run, name: str) -> float:
    step = run.steps[name]
    return round((step.end_time - step.start_time).total_seconds(), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--config", default=str(cli.REPO_ROOT / "configs" / "ensemble.yaml"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(Path(args.config).read_text())
    config["parameters"]["submission_path"] = str(args.out.resolve() / "submission.csv")
    path = HOME / "ensemble.yaml"
    path.write_text(yaml.safe_dump(config))

    from zenml.client import Client

    started = time.perf_counter()
    run = Client().get_pipeline_run(cli.run_pipeline("ensemble", str(path), "bench").id)
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
    compare_weightings(run, [m["name"] for m in config["parameters"]["members"]],
                       config["parameters"].get("ensemble", {}))


def compare_weightings(run, names: list[str], ensemble: dict) -> None:
    """Each weighting on the members' val predictions: in-sample and cross-fitted AUC, and the
    cross-fitted ensemble's paired-bootstrap difference from the best single member."""
    from cxr.infer.ensemble import EnsembleConfig, cross_fit_predictions, fit_ensemble
    from cxr.lifecycle.promotion import bootstrap_auc_deltas
    from cxr.metrics.classification import mean_auc

    val = run.steps["preprocess_images"].outputs["decoded_images"][0].load().split("val")
    y, mask, groups = val.labels, val.mask, val.manifest["patient_id"].to_numpy()
    preds = {n: run.steps[f"tta_val_{n}"].outputs["predictions"][0].load()[list(val.label_names)].to_numpy()
             for n in names}
    best = max(names, key=lambda n: mean_auc(y, preds[n], mask))
    keep_all = {"auc_floor": 0.0, "max_gap": 1.0}
    for selection, weighting in itertools.product(("config", "all"), ("auc", "equal", "rank", "stack")):
        cfg = EnsembleConfig(**(ensemble | (keep_all if selection == "all" else {}) | {"weighting": weighting}))
        in_sample = mean_auc(y, fit_ensemble(preds, y, mask, cfg).combine(preds), mask)
        cross_fit = cross_fit_predictions(preds, y, mask, groups, cfg)
        deltas = bootstrap_auc_deltas(y, mask, cross_fit, preds[best], n_bootstrap=2000)
        low, high = np.nanquantile(deltas, [0.025, 0.975])
        print(json.dumps({"bench": "ensemble_weighting", "members": selection, "weighting": weighting,
                          "val_auc_in_sample": round(in_sample, 4),
                          "val_auc_cross_fit": round(mean_auc(y, cross_fit, mask), 4), "best_member": best,
                          "best_member_val_auc": round(mean_auc(y, preds[best], mask), 4),
                          "cross_fit_minus_best": round(mean_auc(y, cross_fit, mask) - mean_auc(y, preds[best], mask), 4),
                          "ci95": [round(float(low), 4), round(float(high), 4)]}), flush=True)


if __name__ == "__main__":
    main()
