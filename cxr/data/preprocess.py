"""Decode once, in parallel: files to one uint8 (N, S, S) array, resized and CLAHE-equalised.

Large sets go to on-disk shards instead (``storage``): written as decoding proceeds, so
memory holds a few shards, not the set.

OpenCV releases the GIL while decoding, resizing and equalising, so a thread pool uses
every core without copying images between processes. What the source looked like before
resizing (side lengths, contrast, clipping, colour) goes to the manifest's ``SOURCE_COLUMNS``,
where the inference guardrails read it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cxr.progress import progress_bar

from cxr.data.decode import ResizePolicy, decode_bytes, decode_source, resize_square
from cxr.data.dicom import DicomConfig
from cxr.data.imageset import SOURCE_COLUMNS, ImageSet, make_manifest
from cxr.data.shards import DEFAULT_SHARD_SIZE, ShardedImages, ShardWriter, scratch_folder
from cxr.errors import DataError, list_problems
from cxr.registry import Registry
from cxr.features.clahe import apply_clahe


ImageSource = str | bytes  # a file path, or an encoded image or DICOM file's bytes


IMAGE_STORES = Registry("image storage")


class PreprocessConfig(BaseModel):
    """How images are decoded, resized and equalised (``parameters.preprocess`` in YAML)."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(224, ge=16, le=2048, description="side of the square output, px")
    resize_policy: ResizePolicy = Field("pad", description="pad to square, or center-crop")
    clahe: bool = Field(True, description="apply CLAHE after resizing")
    clahe_clip_limit: float = Field(2.0, gt=0)
    clahe_tile_grid: int = Field(8, ge=1, le=64)
    num_workers: int = Field(0, ge=0, description="threads; 0 means one per core")
    skip_corrupt: bool = Field(False, description="leave out unreadable files instead of failing")
    dicom: DicomConfig = Field(default_factory=DicomConfig, description="VOI and multi-frame handling of DICOM files")
    storage: IMAGE_STORES.choice() = Field(
        "auto", description="pixels in one in-memory array (memory), or in shards on disk (shards); auto: "
                            "shards from shards_from images on")
    shards_from: int = Field(20_000, ge=1, description="the set size at which auto storage switches to shards")
    shard_size: int = Field(DEFAULT_SHARD_SIZE, ge=1, description="images per shard")


def prepare_image(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Resize and (optionally) equalise one decoded uint8 (H, W) image."""
    image = resize_square(image, cfg.image_size, cfg.resize_policy)
    if cfg.clahe:
        image = apply_clahe(image, cfg.clahe_clip_limit, cfg.clahe_tile_grid)
    return image


def source_stats(image: np.ndarray, colour: float = 0.0) -> tuple[float, ...]:
    """``SOURCE_COLUMNS`` of one decoded uint8 (H, W) image: height, width, std, the share of
    pixels at 0 or 255, and colourfulness."""
    _, std = cv2.meanStdDev(image)  # OpenCV, not numpy: it releases the GIL, so decoding threads do not queue
    hist = cv2.calcHist([image], [0], None, [256], [0, 256]).ravel()
    clipped = float(hist[0] + hist[255]) / max(image.size, 1)
    return float(image.shape[0]), float(image.shape[1]), float(std.ravel()[0]), clipped, colour


def _prepared(image: np.ndarray, cfg: PreprocessConfig, colour: float = 0.0) -> tuple[np.ndarray, tuple]:
    return prepare_image(image, cfg), source_stats(image, colour)


def _load(path: str, cfg: PreprocessConfig) -> tuple[np.ndarray, tuple] | str:
    """The prepared image and its source stats, or the error message if the file cannot be decoded."""
    try:
        image, colour = decode_source(path, cfg.dicom)
        return _prepared(image, cfg, colour)
    except DataError as err:
        return str(err)


def _load_source(source: ImageSource, name: str, cfg: PreprocessConfig) -> tuple[np.ndarray, tuple] | str:
    """``_load`` for a path or an encoded file's bytes, errors naming ``name`` instead of the source."""
    try:
        image, colour = (decode_bytes(source, name, cfg.dicom) if isinstance(source, bytes)
                         else decode_source(source, cfg.dicom, name))
        return _prepared(image, cfg, colour)
    except DataError as err:
        return str(err)
    except Exception as err:  # a request's row: whatever a decoder raises is that row's error, not the request's
        return f"{name} could not be decoded ({type(err).__name__})"


class _ArrayOut:
    """Prepared images into one in-memory array, row by row."""

    def __init__(self, n: int, size: int) -> None:
        self.images = np.empty((n, size, size), np.uint8)

    def put(self, i: int, image: np.ndarray) -> None:
        self.images[i] = image

    def result(self, keep: np.ndarray) -> np.ndarray:
        return self.images if len(keep) == len(self.images) else self.images[keep]


class _ShardOut:
    """Prepared images into shards in a scratch folder, in row order (failed rows left out)."""

    def __init__(self, size: int, shard_size: int) -> None:
        self.folder, self.token = scratch_folder()
        self.writer = ShardWriter(self.folder, (size, size), shard_size)

    def put(self, i: int, image: np.ndarray) -> None:
        self.writer.append(image)

    def result(self, keep: np.ndarray) -> ShardedImages:
        self.writer.close()
        return ShardedImages(self.folder, owner=self.token)


@IMAGE_STORES.register("memory")
def memory_store(n: int, cfg: PreprocessConfig) -> _ArrayOut:
    """One (N, S, S) array: small sets, and every request served."""
    return _ArrayOut(n, cfg.image_size)


@IMAGE_STORES.register("shards")
def shard_store(n: int, cfg: PreprocessConfig) -> _ShardOut:
    """``cfg.shard_size`` images per shard on disk, written as they are decoded."""
    return _ShardOut(cfg.image_size, cfg.shard_size)


@IMAGE_STORES.register("auto")
def auto_store(n: int, cfg: PreprocessConfig) -> _ArrayOut | _ShardOut:
    """Shards from ``cfg.shards_from`` images on, else memory."""
    return (shard_store if n >= cfg.shards_from else memory_store)(n, cfg)


def _prepare_all(work, n: int, cfg: PreprocessConfig, progress: bool):
    """Run ``work(i)`` for every row in a thread pool (OpenCV single-threaded inside), a chunk of rows
    at a time so that finished images never pile up: the images (in ``cfg.storage``) of the rows that
    decoded, those rows, their source stats and each failed (row, message)."""
    workers = cfg.num_workers or os.cpu_count() or 1
    sink = IMAGE_STORES.create(cfg.storage, n, cfg)
    stats = np.zeros((n, len(SOURCE_COLUMNS)), np.float64)
    failed: list[tuple[int, str]] = []
    chunk = max(cfg.shard_size, 2 * workers)
    bar = progress_bar(total=n, desc="preprocess", disable=not progress)
    previous_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            for start in range(0, n, chunk):
                rows = range(start, min(start + chunk, n))
                for i, result in zip(rows, pool.map(work, rows)):
                    if isinstance(result, str):
                        failed.append((i, result))
                    else:
                        sink.put(i, result[0])
                        stats[i] = result[1]
                    bar.update(1)
    finally:
        bar.close()
        cv2.setNumThreads(previous_threads)
    decoded = np.ones(n, bool)
    decoded[[i for i, _ in failed]] = False
    keep = np.flatnonzero(decoded)
    return sink.result(keep), keep, stats, failed


def preprocess_imageset(imageset: ImageSet, cfg: PreprocessConfig,
                        progress: bool = True) -> ImageSet:
    """Decode (or take already decoded) images, resize and equalise them into one array (or shards).

    Unreadable files raise one DataError listing them all, unless ``cfg.skip_corrupt``:
    then they are dropped from the set and recorded in ``ImageSet.skipped``.
    """
    if imageset.images is not None:
        sources = imageset.images
        work = lambda i: _prepared(sources[i], cfg)  # noqa: E731
    else:
        paths = imageset.manifest["path"].tolist()
        work = lambda i: _load(paths[i], cfg)  # noqa: E731
    out, keep, stats, failed = _prepare_all(work, len(imageset), cfg, progress)
    if failed and not cfg.skip_corrupt:
        raise DataError(f"{len(failed)} image(s) could not be decoded (set skip_corrupt to leave "
                        "them out):" + list_problems([msg for _, msg in failed]))
    imageset = imageset.with_source_stats(stats)
    if not failed:
        return imageset.with_images(out)
    skipped = [{"path": imageset.manifest["path"].iloc[i], "reason": msg} for i, msg in failed]
    return imageset.with_images(out, keep=keep, skipped=skipped)


def preprocess_sources(sources: Sequence[ImageSource], names: Sequence[str], ids: Sequence[str],
                       cfg: PreprocessConfig) -> tuple[ImageSet, dict[int, str]]:
    """Decode and prepare one path or encoded file's bytes per row, going on past bad rows (a
    request's): the unlabelled set of the rows that decoded, in order, and each failed row's error."""
    out, keep, stats, failed = _prepare_all(lambda i: _load_source(sources[i], names[i], cfg), len(sources),
                                            cfg.model_copy(update={"storage": "memory"}), progress=False)
    errors = dict(failed)
    kept_ids = [str(ids[i]) for i in keep]
    manifest = make_manifest(kept_ids, [names[i] for i in keep])
    imageset = ImageSet(manifest, (), np.zeros((len(keep), 0), np.float32), np.zeros((len(keep), 0), bool))
    return imageset.with_source_stats(stats[keep]).with_images(out), errors
