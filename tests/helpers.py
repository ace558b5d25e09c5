"""Plain helpers shared by the tests: generated X-rays, image folders, random checkpoints, a free port."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from cxr.data.imageset import ImageSet, make_manifest
from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.data.sources import read_class_folders
from cxr.data.split import SplitConfig, split_train_val
from cxr.models.checkpoint import Checkpoint, CheckpointMeta
from cxr.models.classifier import Classifier, ModelConfig


def synthetic_xray(rng: np.random.Generator, size: int = 64, positive: bool = False) -> np.ndarray:
    """A gray chest-like image: two dark lung fields; positives get a bright blurred opacity."""
    image = np.full((size, size), 150, np.float32)
    for cx in (0.32, 0.68):
        cv2.ellipse(image, (int(cx * size), size // 2), (size // 6, size // 3), 0, 0, 360, 60, -1)
    if positive:
        x, y = rng.integers(size // 4, 3 * size // 4, 2)
        cv2.circle(image, (int(x), int(y)), size // 6, 230, -1)
    image = cv2.GaussianBlur(image, (0, 0), size / 40) + rng.normal(0, 8, image.shape)
    return image.clip(0, 255).astype(np.uint8)


def write_class_tree(root: Path, n_per_class: int = 12, size: int = 64, seed: int = 0,
                     ext: str = ".png") -> Path:
    """NORMAL/ and PNEUMONIA/ folders of synthetic images; two images per patient."""
    rng = np.random.default_rng(seed)
    for name, positive in (("NORMAL", False), ("PNEUMONIA", True)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            cv2.imwrite(str(root / name / f"patient{name[0]}{i // 2}_img{i}{ext}"),
                        synthetic_xray(rng, size, positive))
    return root


def labelled_split(root: Path, n_per_class: int, image_size: int = 32,
                   seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(train, val) of a generated class tree at 48 px, preprocessed to ``image_size``, split by patient."""
    tree = write_class_tree(root, n_per_class=n_per_class, size=48)
    images = preprocess_imageset(read_class_folders(tree, "NORMAL", r"^(patient\w\d+)"),
                                 PreprocessConfig(image_size=image_size), progress=False)
    images = split_train_val(images, SplitConfig(val_fraction=0.25, seed=seed))
    return images.split("train"), images.split("val")


def write_images(folder: Path, n: int, size: int = 32, seed: int = 0) -> ImageSet:
    """``n`` generated X-rays as PNG files labelled ``opacity``: even rows positive (bright opacity)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = [str(folder / f"img{i}.png") for i in range(n)]
    for i, path in enumerate(paths):
        cv2.imwrite(path, synthetic_xray(rng, size, positive=i % 2 == 0))
    labels = (np.arange(n) % 2 == 0).astype(np.float32)[:, None]
    manifest = make_manifest([Path(p).stem for p in paths], paths)
    manifest["split"] = "val"
    return ImageSet(manifest, ("opacity",), labels, np.ones_like(labels, bool))


def random_checkpoint(seed: int = 0, image_size: int = 32, labels: Sequence[str] = ("a", "b"),
                      head: str = "linear", **preprocess) -> Checkpoint:
    """A seeded, untrained resnet10t checkpoint; ``preprocess`` keys override PreprocessConfig's defaults."""
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="resnet10t", head=head)
    settings = PreprocessConfig(image_size=image_size, **preprocess).model_dump()
    meta = CheckpointMeta(model=cfg, image_size=image_size, label_names=list(labels), mean=0.5, std=0.25,
                          preprocess=settings)
    return Checkpoint.from_model(Classifier(cfg, len(labels)).eval(), meta)


def pil_gray(path: str | Path) -> np.ndarray:
    """PIL decode; 16-bit min-max windowed to 0-255; colour to 0.299 R + 0.587 G + 0.114 B, alpha dropped."""
    image = Image.open(path)
    pixels = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I"):
        low, high = pixels.min(), pixels.max()
        return np.round((pixels - low) * 255 / (high - low)).astype(np.uint8)
    if pixels.ndim == 3:
        pixels = pixels[..., :3] @ np.array([0.299, 0.587, 0.114])
    return np.round(pixels).astype(np.uint8)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
