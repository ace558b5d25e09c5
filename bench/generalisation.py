"""What each site-adaptation and robustness lever buys: val, proxy and mean corruption AUC per
variant, and one test submission per variant to be scored outside the project.

    python bench/generalisation.py --out DIR [--variants default-base,default-ema] [--list]

A variant is a config (``default``: zenml_config.yaml, ``full``: configs/full.yaml, ``nih``:
configs/nih1000.yaml) with overrides and levers, run through the core as the pipeline runs
it: split with the config's proxy, preprocess, [SSL], fine-tune, [self-training], [AdaBN].
Per variant it prints one JSON line and writes ``DIR/<variant>.csv`` (test images, the
config's TTA views); a variant whose line (``DIR/results.jsonl``) and submission already
exist is skipped, so a sweep spreads over several sittings. Preprocessed sets and trained
checkpoints are cached under ``DIR/cache``: ``-adabn`` reuses its base's training.

How the adaptation levers are scored without test labels: AdaBN and self-training adapt to
the proxy images (unlabelled use) for the proxy figure, and to the test images for the
submission; the corruption figure re-estimates BatchNorm on each corrupted val set when AdaBN
is on. ``speed-<config>`` variants time the training loop plain, with channels_last, bf16
autocast (where the CPU has native bf16), torch.compile and the acquisition augmentations
(``-augment``'s training cost), as ratios to the plain loop.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from cxr.adapt.batchnorm import adabn_checkpoint
from cxr.adapt.selftrain import SelfTrainConfig, self_train
from cxr.cft.genetic import CFTConfig, category_finetune
from cxr.cft.head import last_layer, penultimate_features, with_last_layer
from cxr.data.imageset import ImageSet, load_imageset, save_imageset
from cxr.data.ingest import IngestConfig, read_source, resolve_path
from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.data.split import SplitConfig, split_train_val
from cxr.infer.submission import make_submission, write_submission
from cxr.infer.tta import predict_imageset
from cxr.metrics.classification import mean_auc
from cxr.metrics.robustness import RobustnessConfig, robustness_summary, robustness_table
from cxr.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cxr.models.classifier import ModelConfig
from cxr.ssl.pretrain import SSLConfig, pretrain
from cxr.train.config import TrainConfig
from cxr.train.loop import cpu_has_bf16, fit

CONFIGS = {"default": "zenml_config.yaml", "full": "configs/full.yaml", "nih": "configs/nih1000.yaml"}
ROBUST_AUGMENT = {"train.augment.gamma": 0.3, "train.augment.blur_prob": 0.2, "train.augment.blur_sigma": 1.0,
                  "train.augment.noise_std": 0.03, "train.augment.jpeg_prob": 0.2, "train.augment.jpeg_quality_min": 30,
                  "train.augment.resample_prob": 0.2, "train.augment.resample_scale_min": 0.5}
SSL = {"method": "simsiam", "positives": "two_views", "epochs": 8, "batch_size": 64, "lr": 0.03,
       "augment": {"crop_scale_min": 0.4, "hflip_prob": 0.5, "rotate_deg": 20, "brightness": 0.3, "contrast": 0.3}}
FAST = {"train.channels_last": True, "train.cpu_bf16": True}  # the CPU speed options the speed variants time
SELF_TRAIN = {"rounds": 1, "threshold": 0.9, "epochs": 2, "lr_scale": 0.3}


def lever_variants(config: str) -> dict[str, dict]:
    """The levers of the issue, alone and combined, on one config."""
    return {
        f"{config}-base": {},
        f"{config}-adabn": {"adabn": True},
        f"{config}-ema": {"overrides": {"train.averaging": "ema"}},
        f"{config}-swa": {"overrides": {"train.averaging": "swa"}},
        f"{config}-augment": {"overrides": ROBUST_AUGMENT},
        f"{config}-selftrain": {"self_training": SELF_TRAIN},
        f"{config}-selftrain-adabn": {"self_training": SELF_TRAIN, "adabn": True},
        f"{config}-ssl": {"ssl": SSL},
        f"{config}-ssl-target": {"ssl": SSL, "ssl_target": True},
        f"{config}-combo": {"overrides": {"train.averaging": "ema", **ROBUST_AUGMENT}, "self_training": SELF_TRAIN,
                            "adabn": True},
        f"{config}-augment-adabn": {"overrides": ROBUST_AUGMENT, "adabn": True},
        f"{config}-ema-augment-adabn": {"overrides": {"train.averaging": "ema", **ROBUST_AUGMENT}, "adabn": True},
        f"{config}-adabn-fast": {"overrides": FAST, "adabn": True},
        f"{config}-augment-adabn-fast": {"overrides": {**ROBUST_AUGMENT, **FAST}, "adabn": True},
    }


def size_backbone_variants(config: str) -> dict[str, dict]:
    """Image size and backbone family at the config's other settings."""
    sizes = {f"{config}-size{s}": {"overrides": {"preprocess.image_size": s}} for s in (96, 128, 160, 224)}
    backbones = {f"{config}-{b}": {"overrides": {"model.backbone": b}}
                 for b in ("efficientnet_b0", "mobilenetv3_large_100", "densenet121", "convnext_atto")}
    return sizes | backbones


VARIANTS = {name: spec | {"config": config} for config in CONFIGS
            for name, spec in (lever_variants(config) | size_backbone_variants(config)).items()}
VARIANTS |= {f"speed-{config}": {"config": config, "speed": True} for config in CONFIGS}


def emit(out: Path, line: dict) -> None:
    text = json.dumps({"bench": "generalisation", **line})
    print(text, flush=True)
    with open(out / "results.jsonl", "a") as f:
        f.write(text + "\n")


def done(out: Path) -> set[str]:
    path = out / "results.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return {line["variant"] for line in lines if "variant" in line}


def set_dotted(params: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        params = params.setdefault(part, {})
    params[leaf] = value


def variant_params(spec: dict) -> dict:
    params = yaml.safe_load(Path(CONFIGS[spec["config"]]).read_text())["parameters"]
    for key, value in spec.get("overrides", {}).items():
        set_dotted(params, key, value)
    return params


def key_of(*parts) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def cached_set(out: Path, source: dict, split: dict | None, prep: PreprocessConfig) -> ImageSet:
    """The ingested, [split,] preprocessed set, from ``out/cache`` when there."""
    folder = out / "cache" / f"set-{key_of(source, split, prep.model_dump())}"
    if (folder / "meta.json").exists():
        return load_imageset(str(folder))
    data = read_source(IngestConfig(**source))
    if split is not None:
        data = split_train_val(data, SplitConfig(**split))
    data = preprocess_imageset(data, prep, progress=False)
    folder.mkdir(parents=True)
    save_imageset(data, str(folder))
    return data


def trained(out: Path, spec: dict, params: dict, data: ImageSet, test: ImageSet) -> tuple[Checkpoint, float]:
    """The fine-tuned (optionally SSL-initialised) checkpoint and its training seconds, cached."""
    model, train_cfg = ModelConfig(**params["model"]), TrainConfig(**params["train"])
    ssl = spec.get("ssl")
    folder = out / "cache" / f"ckpt-{key_of(params['data'], params['split'], params['preprocess'], params['model'], params['train'], ssl, spec.get('ssl_target'))}"
    if (folder / "meta.json").exists():
        return load_checkpoint(folder), json.loads((folder / "seconds.json").read_text())["seconds"]
    started = time.perf_counter()
    backbone = None
    if ssl is not None:
        pool = data.split("train").images
        if spec.get("ssl_target"):
            pool = np.concatenate([pool, test.images])
        backbone, _ = pretrain(pool, model.backbone, SSLConfig(**ssl), None, progress=False)
    proxy = data.split("proxy")
    result = fit(data.split("train"), data.split("val"), model, train_cfg, params["preprocess"], progress=False,
                 backbone_init=backbone, proxy=proxy if len(proxy) else None)
    checkpoint = with_cft(result.checkpoint, data, params["cft"]) if params.get("cft") else result.checkpoint
    seconds = time.perf_counter() - started
    save_checkpoint(checkpoint, folder)
    (folder / "seconds.json").write_text(json.dumps({"seconds": seconds}))
    return checkpoint, seconds


def with_cft(checkpoint: Checkpoint, data: ImageSet, cft: dict) -> Checkpoint:
    """The checkpoint after the config's CFT of the last layer, as the cft_finetune step does it."""
    train, val = data.split("train"), data.split("val")
    weight, bias = last_layer(checkpoint)
    new_weight, new_bias, _ = category_finetune(
        penultimate_features(checkpoint, train.images), train.labels, train.mask,
        penultimate_features(checkpoint, val.images), val.labels, val.mask, weight, bias,
        list(checkpoint.meta.label_names), CFTConfig(**cft))
    return with_last_layer(checkpoint, new_weight, new_bias, checkpoint.meta.val_metrics)


def adapted(checkpoint: Checkpoint, spec: dict, params: dict, data: ImageSet, target: np.ndarray) -> Checkpoint:
    """``checkpoint`` self-trained on and/or AdaBN-adapted to the unlabelled ``target`` images."""
    if spec.get("self_training"):
        proxy = data.split("proxy")
        checkpoint, _ = self_train(checkpoint, data.split("train"), data.split("val"), target,
                                   TrainConfig(**params["train"]), SelfTrainConfig(**spec["self_training"]),
                                   proxy if len(proxy) else None, progress=False)
    return adabn_checkpoint(checkpoint, target) if spec.get("adabn") else checkpoint


def tta_auc(checkpoint: Checkpoint, part: ImageSet, views: list[str]) -> float:
    probs = predict_imageset(checkpoint, part, views)[list(part.label_names)].to_numpy()
    return mean_auc(part.labels, probs, part.mask)


def run_variant(out: Path, name: str, spec: dict) -> dict:
    started = time.perf_counter()
    params = variant_params(spec)
    prep = PreprocessConfig(**params["preprocess"])
    data = cached_set(out, params["data"], params["split"], prep)
    test = cached_set(out, params["test_data"], None, prep)
    base, train_seconds = trained(out, spec, params, data, test)
    views = params.get("tta_views", ["original"])
    proxy = data.split("proxy")
    served = adapted(base, spec, params, data, test.images)
    line = {"variant": name, "config": CONFIGS[spec["config"]], "levers": {k: v for k, v in spec.items() if k != "config"},
            "val_auc": round(tta_auc(served, data.split("val"), views), 4)}
    if len(proxy):
        line["proxy_auc"] = round(tta_auc(adapted(base, spec, params, data, proxy.images), proxy, views), 4)
    summary = robustness_summary(robustness_table(served, data.split("val"), RobustnessConfig(adabn=bool(spec.get("adabn"))),
                                                  device="cpu", progress=False))
    line |= {"mean_corruption_auc": round(summary["mean_corruption_auc"], 4),
             "worst_corruption": min((k for k in summary if k.endswith("_auc") and k not in
                                      ("clean_auc", "mean_corruption_auc", "relative_corruption_auc")), key=summary.get)}
    sample = resolve_path(params["sample_submission"]) if params.get("sample_submission") else None
    submission = write_submission(make_submission(predict_imageset(served, test, views), sample),
                                  out / f"{name}.csv")
    return line | {"train_seconds": round(train_seconds, 1), "wall_seconds": round(time.perf_counter() - started, 1),
                   "submission": str(submission)}


def images_per_s(data: ImageSet, params: dict, **overrides) -> float:
    """Training images/s of the second of two short epochs (the first pays for compilation)."""
    cfg = TrainConfig(**params["train"]).model_copy(update={"epochs": 2, "samples_per_epoch": 32 * 25, **overrides})
    val = data.split("val")
    result = fit(data.split("train"), val.subset(np.random.default_rng(0).permutation(len(val))[:128]),
                 ModelConfig(**params["model"]), cfg, progress=False)
    return float(result.history["train_images_per_s"].iloc[-1])


def run_speed(out: Path, name: str, spec: dict) -> dict:
    """Each option's training images/s over the plain loop's, measured back to back (so a
    noisy neighbour slows both of a pair alike)."""
    params = variant_params(spec)
    data = cached_set(out, params["data"], params["split"], PreprocessConfig(**params["preprocess"]))
    line = {"variant": name, "config": CONFIGS[spec["config"]], "cpu_has_bf16": cpu_has_bf16(),
            "threads": torch.get_num_threads()}
    augment = TrainConfig(**params["train"]).augment
    options = {"channels_last": {"channels_last": True}, "compile": {"compile": True},
               "acquisition_augment": {"augment": augment.model_copy(
                   update={key.removeprefix("train.augment."): value for key, value in ROBUST_AUGMENT.items()})}}
    if cpu_has_bf16():
        options["bf16"] = {"cpu_bf16": True}
    for option, overrides in options.items():
        plain = images_per_s(data, params)
        line[f"plain_images_per_s_vs_{option}"] = round(plain, 1)
        try:
            line[f"{option}_ratio"] = round(images_per_s(data, params, **overrides) / plain, 3)
        except Exception as error:  # a backend that cannot compile here is a finding, reported as such
            line[f"{option}_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return line


def markdown_table(out: Path) -> str:
    """The lever variants of ``out/results.jsonl`` as a markdown table (latest line per variant)."""
    lines = {}
    for text in (out / "results.jsonl").read_text().splitlines():
        line = json.loads(text)
        if "val_auc" in line:
            lines[line["variant"]] = line
    rows = ["| variant | val AUC | proxy AUC | mean corruption AUC | worst corruption | train s | wall s |",
            "|---|---|---|---|---|---|---|"]
    for name, line in lines.items():
        proxy = f"{line['proxy_auc']:.4f}" if "proxy_auc" in line else "–"
        rows.append(f"| {name} | {line['val_auc']:.4f} | {proxy} | "
                    f"{line['mean_corruption_auc']:.4f} | {line['worst_corruption'].removesuffix('_auc')} | "
                    f"{line['train_seconds']:.0f} | {line['wall_seconds']:.0f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", default="default-base,default-adabn,default-ema,default-augment")
    parser.add_argument("--list", action="store_true", help="print the variant names and exit")
    parser.add_argument("--table", action="store_true", help="print DIR/results.jsonl as a markdown table and exit")
    args = parser.parse_args()
    if args.list:
        print("\n".join(VARIANTS))
        return
    if args.table:
        print(markdown_table(args.out))
        return
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; --list shows them")
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TQDM_DISABLE", "1")
    for name in names:
        spec = VARIANTS[name]
        if name in done(args.out) and (spec.get("speed") or (args.out / f"{name}.csv").exists()):
            print(json.dumps({"bench": "generalisation", "variant": name, "skipped": "already in --out"}), flush=True)
            continue
        emit(args.out, (run_speed if spec.get("speed") else run_variant)(args.out, name, spec))


if __name__ == "__main__":
    main()
