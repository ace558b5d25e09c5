"""How often the input guardrails flag real X-rays, and how often they catch what they should.

    python bench/guardrails.py --checkpoint DIR [--config zenml_config.yaml] [--out DIR]

Fits the guardrails on the config's train split with the checkpoint, then prints one JSON
line per image set with the share flagged and the share per reason: val and test (real
X-rays: should be small) and generated inputs made from val's source files, written as files
and read back the way inference reads them: inverted X-rays, natural-image-like textures
(1/f noise, colour and gray), lateral-like crops (a vertical strip of a frontal view),
all-black, 1x1 and uniform noise.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

from cxr.data.decode import decode_gray
from cxr.data.ingest import IngestConfig, read_source
from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.data.sources import read_image_folder
from cxr.data.split import SplitConfig, split_train_val
from cxr.infer.guardrails import CHECKS, GuardrailConfig, fit_guardrails, guard
from cxr.models.checkpoint import load_checkpoint


def pink_noise(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    """1/f noise, the power spectrum of natural images, scaled to 0-255."""
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    amplitude = 1 / np.maximum(np.hypot(fx, fy), 1 / size)
    out = []
    for _ in range(channels):
        phase = np.exp(2j * np.pi * rng.random((size, size)))
        field = np.fft.ifft2(amplitude * phase).real
        out.append((field - field.min()) / (np.ptp(field) + 1e-9) * 255)
    return np.stack(out, -1).astype(np.uint8).squeeze()


def generated_sets(sources: list[np.ndarray], rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """The inputs the guardrails should catch, built from real decoded val X-rays."""
    n, side = len(sources), 224

    def strip(image: np.ndarray) -> np.ndarray:
        w = image.shape[1]
        left = int(rng.uniform(0.05, 0.55) * w)
        return cv2.resize(image[:, left:left + int(0.4 * w)], (image.shape[0], image.shape[0]))

    return {"inverted": [255 - s for s in sources],
            "texture_colour": [pink_noise(rng, side, 3) for _ in range(n)],
            "texture_gray": [pink_noise(rng, side, 1) for _ in range(n)],
            "lateral_like_crop": [strip(s) for s in sources],
            "all_black": [np.zeros((side, side), np.uint8)] * n,
            "one_pixel": [np.full((1, 1), int(rng.integers(0, 256)), np.uint8) for _ in range(n)],
            "uniform_noise": [rng.integers(0, 256, (side, side), dtype=np.uint8) for _ in range(n)]}


def shares(flags, name: str, seconds: float) -> dict:
    reasons = {check: round(float(flags["flag_reason"].str.split(";").apply(lambda r: check in r).mean()), 4)
               for check in CHECKS.names()}
    return {"bench": "guardrails", "set": name, "images": len(flags), "flagged": round(float(flags["flag"].mean()), 4),
            "by_reason": reasons, "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--config", default="zenml_config.yaml")
    parser.add_argument("--generated", type=int, default=100, help="images per generated set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    params = yaml.safe_load(Path(args.config).read_text())["parameters"]
    checkpoint = load_checkpoint(args.checkpoint)
    prep = PreprocessConfig(**{**params["preprocess"], "image_size": checkpoint.meta.image_size})
    data = split_train_val(read_source(IngestConfig(**params["data"])), SplitConfig(**params["split"]))
    data = preprocess_imageset(data, prep, progress=False)
    cfg = GuardrailConfig(**params.get("guardrails") or {})
    started = time.perf_counter()
    checkpoint = fit_guardrails(checkpoint, data.split("train").images, data.split("val").images, cfg)
    print(json.dumps({"bench": "guardrails", "fit_seconds": round(time.perf_counter() - started, 2),
                      "ood_threshold": round(float(checkpoint.state_dict["guardrails.ood_threshold"][0]), 2)}))
    sets = {"val": data.split("val")}
    if params.get("test_data"):
        sets["test"] = preprocess_imageset(read_source(IngestConfig(**params["test_data"])), prep, progress=False)
    rng = np.random.default_rng(args.seed)
    val_paths = data.split("val").manifest["path"].tolist()
    picks = rng.choice(len(val_paths), min(args.generated, len(val_paths)), replace=False)
    with tempfile.TemporaryDirectory() as tmp:
        for name, images in generated_sets([decode_gray(val_paths[i]) for i in picks], rng).items():
            folder = Path(tmp) / name
            folder.mkdir()
            for i, image in enumerate(images):
                cv2.imwrite(str(folder / f"{i:04d}.png"), image if image.ndim == 2 else image[:, :, ::-1])
            sets[name] = preprocess_imageset(read_image_folder(folder), prep, progress=False)
        for name, images in sets.items():
            started = time.perf_counter()
            print(json.dumps(shares(guard(checkpoint, images, cfg), name, time.perf_counter() - started)), flush=True)


if __name__ == "__main__":
    main()
