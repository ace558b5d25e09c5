"""ImageSet: the one typed artifact that carries images and labels between steps.

A manifest DataFrame (one row per image: id, source path, patient id, split) plus a label
matrix, a label mask (False where the label is unknown) and, once preprocessed, a uint8
array of decoded, resized grayscale images that later steps read instead of image files: in
memory for small sets, or on-disk shards (``cxr.data.shards``) for sets that do not fit.
``save_imageset``/``load_imageset`` are its one storage format (the ZenML materializer and
the data-parallel launcher both use it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from typing import IO, Callable, Sequence

import numpy as np
import pandas as pd

from cxr.data.shards import INDEX_FILE, ShardedImages, localise_shards, pixel_digest, take_rows, write_shards

MANIFEST_COLUMNS = ("id", "path", "patient_id", "split")
SOURCE_COLUMNS = ("source_height", "source_width", "source_std", "source_clipped", "source_colour")
HEADER_COLUMNS = ("view", "modality", "sex", "age_band", "manufacturer")
DATASET_COLUMN = "dataset"  # the dataset an image came from, when several are merged
AGE_BANDS = ((0, 18, "0-17"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 120, "80+"))
LABEL_PREFIX = "label:"
MASK_PREFIX = "known:"
MANIFEST_FILE, IMAGES_FILE, META_FILE = "manifest.parquet", "images.npy", "meta.json"
Opener = Callable[[str, str], IO]


@dataclass(frozen=True)
class ImageSet:
    """Images with their labels, label mask and provenance.

    Args:
        manifest: one row per image with the columns in ``MANIFEST_COLUMNS``, plus
            ``SOURCE_COLUMNS`` (the decoded source's size, contrast, clipping, colour) once
            preprocessed, ``HEADER_COLUMNS`` (whitelisted DICOM tags) for DICOM sources and
            ``dataset`` for merged datasets.
        label_names: names of the label columns, in model output order (may be empty).
        labels: float32 (N, L) with 0/1 where known (0 where unknown).
        mask: bool (N, L), True where the label is known.
        images: uint8 (N, H, W) decoded grayscale images (an array, or ``ShardedImages`` on disk),
            or None before preprocessing.
        skipped: files left out under ``skip_corrupt``, as dicts with ``path`` and ``reason``.
    """

    manifest: pd.DataFrame
    label_names: tuple[str, ...]
    labels: np.ndarray
    mask: np.ndarray
    images: np.ndarray | ShardedImages | None = None
    skipped: tuple[dict, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        n, n_labels = len(self.manifest), len(self.label_names)
        missing = [c for c in MANIFEST_COLUMNS if c not in self.manifest.columns]
        if missing:
            raise ValueError(f"ImageSet manifest lacks columns {missing}")
        if self.labels.shape != (n, n_labels) or self.mask.shape != (n, n_labels):
            raise ValueError(
                f"ImageSet labels {self.labels.shape} / mask {self.mask.shape} do not match "
                f"{n} images x {n_labels} labels"
            )
        if self.images is not None and (self.images.ndim != 3 or len(self.images) != n):
            raise ValueError(f"ImageSet images must be (N={n}, H, W), got {self.images.shape}")

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def ids(self) -> list[str]:
        return self.manifest["id"].tolist()

    @property
    def is_labelled(self) -> bool:
        return bool(self.label_names) and bool(self.mask.any())

    def subset(self, index: Sequence[int] | np.ndarray) -> "ImageSet":
        """Rows ``index`` of every part, in that order."""
        index = np.asarray(index, dtype=np.int64)
        return replace(
            self,
            manifest=self.manifest.iloc[index].reset_index(drop=True),
            labels=self.labels[index],
            mask=self.mask[index],
            images=None if self.images is None else take_rows(self.images, index),
        )

    def split(self, name: str) -> "ImageSet":
        """The rows whose ``split`` column equals ``name``."""
        return self.subset(np.flatnonzero(self.manifest["split"].to_numpy() == name))

    def with_source_stats(self, stats: np.ndarray) -> "ImageSet":
        """A copy whose manifest gains ``SOURCE_COLUMNS`` from ``stats`` (N, 5)."""
        manifest = self.manifest.assign(**{name: stats[:, j] for j, name in enumerate(SOURCE_COLUMNS)})
        return replace(self, manifest=manifest)

    def with_images(self, images: np.ndarray | ShardedImages, keep: np.ndarray | None = None,
                    skipped: Sequence[dict] = ()) -> "ImageSet":
        """A copy holding decoded ``images`` for the rows in ``keep`` (all rows if None)."""
        base = self if keep is None else self.subset(keep)
        return replace(base, images=images, skipped=tuple(self.skipped) + tuple(skipped))

    def fingerprint(self) -> str:
        """Content hash of manifest, labels, mask and images (or, before decoding, file stats).

        Lets a cache tell an unchanged set from a changed one even when it was re-read.
        """
        digest = hashlib.blake2b(digest_size=20)
        digest.update(json.dumps(self.label_names).encode())
        digest.update(pd.util.hash_pandas_object(self.label_frame(), index=False).to_numpy().tobytes())
        if isinstance(self.images, ShardedImages):
            digest.update(str(self.images.shape).encode())
            digest.update("".join(self.images.digests()).encode())
        elif self.images is not None:
            digest.update(str(self.images.shape).encode())
            digest.update(memoryview(np.ascontiguousarray(self.images)).cast("B"))
        else:
            for path in self.manifest["path"]:
                stat = os.stat(path) if os.path.isfile(path) else None
                digest.update(f"{path}:{stat and stat.st_size}:{stat and stat.st_mtime_ns}".encode())
        return digest.hexdigest()

    def image_digests(self) -> list[str]:
        """Per image, a hash of its decoded pixels (so the same picture under another name or in a
        lossless format gets the same digest), or of its file's bytes before decoding."""
        if self.images is None:
            return [file_digest(path) for path in self.manifest["path"]]
        if isinstance(self.images, ShardedImages):
            return self.images.digests()
        return [pixel_digest(image) for image in self.images]

    def content_hash(self) -> str:
        """Hash of ids, labels, mask and pixels only: the same for the same images wherever their
        files lie (``fingerprint`` also covers paths and splits)."""
        digest = hashlib.blake2b(digest_size=20)
        digest.update(json.dumps([self.ids, list(self.label_names)]).encode())
        digest.update(np.ascontiguousarray(self.labels).tobytes() + np.ascontiguousarray(self.mask).tobytes())
        digest.update("".join(self.image_digests()).encode())
        return digest.hexdigest()

    def label_frame(self) -> pd.DataFrame:
        """Manifest plus one label and one mask column per label name (for parquet)."""
        frame = self.manifest.copy()
        for j, name in enumerate(self.label_names):
            frame[LABEL_PREFIX + name] = self.labels[:, j]
            frame[MASK_PREFIX + name] = self.mask[:, j]
        return frame

    @classmethod
    def from_label_frame(cls, frame: pd.DataFrame, label_names: Sequence[str],
                         images: np.ndarray | None = None,
                         skipped: Sequence[dict] = ()) -> "ImageSet":
        """Inverse of ``label_frame``."""
        names = tuple(label_names)
        labels = np.stack([frame[LABEL_PREFIX + n].to_numpy(np.float32) for n in names], 1) \
            if names else np.zeros((len(frame), 0), np.float32)
        mask = np.stack([frame[MASK_PREFIX + n].to_numpy(bool) for n in names], 1) \
            if names else np.zeros((len(frame), 0), bool)
        columns = list(MANIFEST_COLUMNS) + [c for c in SOURCE_COLUMNS + HEADER_COLUMNS + (DATASET_COLUMN,)
                                            if c in frame.columns]
        return cls(frame[columns].reset_index(drop=True), names,
                   labels.reshape(len(frame), len(names)), mask.reshape(len(frame), len(names)),
                   images, tuple(skipped))


def years_band(years: float) -> str:
    """The ``age_band`` of an age in years ('' when unknown, negative or past 120): bands, not ages, so
    that subgroup reports never hold an identifying age."""
    return next((name for low, high, name in AGE_BANDS if low <= years < high), "")



def hashed_id(value: str) -> str:
    """12 hex digits of blake2b: the form in which an image or patient id may be logged."""
    return hashlib.blake2b(str(value).encode(), digest_size=6).hexdigest()


def file_digest(path: str) -> str:
    """blake2b of a file's bytes (32 hex characters)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def make_manifest(ids: Sequence[str], paths: Sequence[str],
                  patient_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """A manifest with every image in the 'all' split; patient id defaults to the image id."""
    ids = [str(i) for i in ids]
    return pd.DataFrame({
        "id": ids,
        "path": [str(p) for p in paths],
        "patient_id": [str(p) for p in patient_ids] if patient_ids is not None else ids,
        "split": "all",
    })


def save_imageset(data: ImageSet, folder: str, open_file: Opener = open) -> None:
    """``data`` as ``manifest.parquet`` (labels and masks included), the images (``images.npy``, or
    ``shards.json`` and its shards for a sharded set, copied a shard at a time) and ``meta.json``
    (label names, skipped files) in ``folder``; ``open_file`` opens a path in it (``open``, or an
    artifact store's ``fileio.open``)."""
    with open_file(os.path.join(folder, META_FILE), "w") as f:
        json.dump({"label_names": list(data.label_names), "skipped": list(data.skipped)}, f)
    with open_file(os.path.join(folder, MANIFEST_FILE), "wb") as f:
        data.label_frame().to_parquet(f, index=False)
    if isinstance(data.images, ShardedImages):
        write_shards(data.images, folder, open_file=open_file)
    elif data.images is not None:
        with open_file(os.path.join(folder, IMAGES_FILE), "wb") as f:
            np.save(f, np.ascontiguousarray(data.images), allow_pickle=False)


def load_imageset(folder: str, open_file: Opener = open, exists: Callable[[str], bool] = os.path.exists,
                  mmap: bool = False) -> ImageSet:
    """The ImageSet ``save_imageset`` wrote; ``mmap`` maps ``images.npy`` read-only instead of
    reading it (a local folder only: processes then share one copy in the page cache). Shards are
    always read in place: from a local folder, else from a copy in local scratch."""
    with open_file(os.path.join(folder, META_FILE), "r") as f:
        meta = json.load(f)
    with open_file(os.path.join(folder, MANIFEST_FILE), "rb") as f:
        frame = pd.read_parquet(f)
    images, path = None, os.path.join(folder, IMAGES_FILE)
    if exists(os.path.join(folder, INDEX_FILE)):
        images = sharded_images(folder, open_file)
    elif mmap:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    elif exists(path):
        with open_file(path, "rb") as f:
            images = np.load(f, allow_pickle=False)
    return ImageSet.from_label_frame(frame, meta["label_names"], images, meta["skipped"])


def sharded_images(folder: str, open_file: Opener = open) -> ShardedImages:
    """The shards in ``folder``, read in place when it is a local folder, else from a local copy."""
    if os.path.isfile(os.path.join(folder, INDEX_FILE)):
        return ShardedImages(folder)
    local, token = localise_shards(folder, open_file)
    return ShardedImages(local, owner=token)
