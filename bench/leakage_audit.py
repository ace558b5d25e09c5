"""The leakage audit of a training config, without training: what ``audit_leakage`` would find.

    python bench/leakage_audit.py [--config zenml_config.yaml]

Ingests, splits (with the config's split, or the default id_order proxy when it sets none)
and preprocesses the training data, its external sets and its test folder as the pipeline
does, then runs ``find_leaks`` over train, val, proxy, the external sets and test. Prints
one JSON line with the part sizes, the counts per kind and pair of parts, and the seconds
the audit took; the example-pair grid goes to /tmp/leakage_audit_<config stem>.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from cxr.data.ingest import ExternalSet, IngestConfig, read_source
from cxr.data.leakage import AuditConfig, find_leaks, leak_counts, leak_pairs_grid
from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.data.split import SPLIT_NAMES, ProxyConfig, SplitConfig, split_train_val


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="zenml_config.yaml")
    args = parser.parse_args()
    params = yaml.safe_load(open(args.config))["parameters"]
    split = SplitConfig(**params.get("split", {}))
    split = split if split.proxy else split.model_copy(update={"proxy": ProxyConfig()})
    prep = PreprocessConfig(**params.get("preprocess", {}))
    data = preprocess_imageset(split_train_val(read_source(IngestConfig(**params["data"])), split), prep,
                               progress=False)
    parts = {name: data.split(name) for name in SPLIT_NAMES}
    for entry in map(ExternalSet.model_validate, params.get("external", [])):
        parts[entry.name] = preprocess_imageset(read_source(entry.data), prep, progress=False)
    if params.get("test_data"):
        parts["test"] = preprocess_imageset(read_source(IngestConfig(**params["test_data"])), prep, progress=False)
    cfg = AuditConfig(**{k: v for k, v in (params.get("audit") or {}).items() if k != "action"})
    started = time.perf_counter()
    leaks = find_leaks(parts, cfg)
    seconds = time.perf_counter() - started
    grid = leak_pairs_grid(parts, leaks, cfg.examples)
    if grid is not None:
        grid.save(f"/tmp/leakage_audit_{Path(args.config).stem}.png")
    print(json.dumps({"bench": "leakage_audit", "config": args.config, "images": {k: len(v) for k, v in parts.items()},
                      "counts": leak_counts(leaks), "audit_seconds": round(seconds, 2)}), flush=True)


if __name__ == "__main__":
    main()
