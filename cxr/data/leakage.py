"""Leakage audit: the same patient or image in two parts of a run (train, val, test, ...).

Three kinds of finding, between every two different parts (never within one):

- ``patient``: a ``patient_id`` found in both parts (one row per shared patient, drawn with
  its first image in each part).
- ``exact``: identical decoded pixels (blake2b of the uint8 array and its shape), whatever
  the file is called.
- ``near``: a flipped, slightly cropped, re-encoded or brightened copy. Both must hold, with
  the image or its horizontal flip, whichever is closer: the 64-bit perceptual hashes
  (``imagehash.phash``) differ in at most ``hash_max_distance`` bits, and the 48 x 48
  thumbnails correlate to within ``pixel_max_distance`` (1 - Pearson r).

Why thumbnails and not the handcrafted features (``bench/leakage_threshold.py``, Kermany
at 96 px): chest X-rays of different patients are alike at the scale of a 64-bit hash (the
nearest other-patient image is 2 bits away, a 2 px crop up to 14) and in the 22 global
features (nearest other patient 0.41, a brightness change up to 8.6, a 2 px crop 3.9), so
neither separates copies from patients. 1 - r of thumbnails does: at most 0.046 for every
flip, JPEG re-encode (quality 50 to 95), brightness shift and 2 px crop at 224 px, and at
least 0.053 between different patients (0.073 from test to train; 32 px thumbnails leave
less room: 0.041 and 0.047). The hash gate, 2 bits above the copies' 14, drops pairs whose
thumbnails agree by chance (of 32 other-patient pairs within 0.08, 14). Crops of 4 px or
more at 224 px (1 px or more at 64 px) overlap other patients and are caught only in part.

Each image of the later part reports at most one match in the earlier part: an exact one
if there is one, else its closest near one (by thumbnails, then hash). Ids in the findings
are 12-hex-digit blake2b digests, so no raw image or patient id reaches a log or artifact.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import cv2
import imagehash
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from cxr.data.imageset import ImageSet, hashed_id, pixel_digest
from cxr.errors import DataError
from cxr.metrics.plots import figure_image
from cxr.registry import Registry

LEAK_ACTIONS = Registry("leak action")
LeakAction = LEAK_ACTIONS.choice()
KINDS = ("patient", "exact", "near")
COLUMNS = ("kind", "part_a", "part_b", "index_a", "index_b", "id_a", "id_b", "hash_distance", "pixel_distance")
THUMBNAIL_SIZE = 48
_CHUNK_CELLS = 1 << 22  # distances held at once per matrix


class AuditConfig(BaseModel):
    """What counts as a leak and what to do about one (``parameters.audit`` in YAML)."""

    model_config = ConfigDict(extra="forbid")

    action: LeakAction = Field("warn", description="a registered leak action: warn or fail")
    hash_max_distance: int = Field(16, ge=0, le=64, description="near: most differing perceptual-hash bits")
    pixel_max_distance: float = Field(0.05, ge=0, le=2, description="near: most 1 - correlation of thumbnails")
    examples: int = Field(8, ge=0, description="pairs drawn in the example grid")


def _phash(image: np.ndarray) -> int:
    """The 64 bits of ``imagehash.phash`` as one integer."""
    bits = imagehash.phash(Image.fromarray(np.ascontiguousarray(image))).hash
    return int(np.packbits(bits.ravel()).view(">u8")[0])


def _thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` resized to size x size, centred and scaled to unit length (zero if constant)."""
    pixels = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    pixels = pixels.ravel() - pixels.mean()
    return pixels / max(float(np.linalg.norm(pixels)), 1e-6)


@dataclass(frozen=True)
class Fingerprints:
    """Per image: pixel digest, (N, 2) uint64 perceptual hashes and (N, 2, size**2) unit thumbnails
    of the image and of its horizontal flip."""

    digests: np.ndarray
    hashes: np.ndarray
    thumbnails: np.ndarray


def fingerprints(images: np.ndarray, size: int = THUMBNAIL_SIZE) -> Fingerprints:
    """Digests, perceptual hashes and thumbnails of uint8 (N, H, W) ``images``, one image at a time
    (a sharded set is read a shard at a time and never held)."""
    digests, hashes, thumbnails = [], [], []
    for image in images:
        pair = (image, image[:, ::-1])
        digests.append(pixel_digest(image))
        hashes.append([_phash(view) for view in pair])
        thumbnails.append([_thumbnail(view, size) for view in pair])
    return Fingerprints(np.array(digests, object), np.array(hashes, np.uint64).reshape(-1, 2),
                        np.array(thumbnails, np.float32).reshape(len(digests), 2, size * size))


def hash_distances(a: Fingerprints, b: Fingerprints) -> np.ndarray:
    """(Nb, Na) uint8 differing hash bits from each B image, as it is or flipped, to each A image."""
    hashes_a = a.hashes[None, :, 0]
    return np.minimum(np.bitwise_count(b.hashes[:, :1] ^ hashes_a), np.bitwise_count(b.hashes[:, 1:] ^ hashes_a))


def pixel_distances(a: Fingerprints, b: Fingerprints) -> np.ndarray:
    """(Nb, Na) float32 1 - Pearson correlation of thumbnails, B as it is or flipped, whichever is closer."""
    thumbnails_a = a.thumbnails[:, 0].T
    return 1.0 - np.maximum(b.thumbnails[:, 0] @ thumbnails_a, b.thumbnails[:, 1] @ thumbnails_a)


def subset(prints: Fingerprints, rows: slice) -> Fingerprints:
    """The fingerprints of images ``rows``."""
    return Fingerprints(prints.digests[rows], prints.hashes[rows], prints.thumbnails[rows])


def row_chunks(n_rows: int, n_cols: int) -> Iterator[slice]:
    """Row slices of an (n_rows, n_cols) distance matrix that keep ``_CHUNK_CELLS`` cells at once."""
    step = max(1, _CHUNK_CELLS // max(n_cols, 1))
    return (slice(start, start + step) for start in range(0, n_rows, step))


def is_near(hash_distance: np.ndarray, pixel_distance: np.ndarray, cfg: AuditConfig) -> np.ndarray:
    """The flag rule: within ``hash_max_distance`` bits and within ``pixel_max_distance``."""
    return (hash_distance <= cfg.hash_max_distance) & (pixel_distance <= cfg.pixel_max_distance)


def near_matches(a: Fingerprints, b: Fingerprints, cfg: AuditConfig) -> tuple[np.ndarray, ...]:
    """(index_a, index_b, hash distance, pixel distance) of each B image's closest near A image."""
    found = [(np.empty(0, np.int64),) * 2 + (np.empty(0, np.uint8), np.empty(0, np.float32))]
    for rows in row_chunks(len(b.hashes), len(a.hashes)):
        part = subset(b, rows)
        hashed, pixel = hash_distances(a, part), pixel_distances(a, part)
        near_b, near_a = np.nonzero(is_near(hashed, pixel, cfg))
        found.append((near_a, near_b + rows.start, hashed[near_b, near_a], pixel[near_b, near_a]))
    index_a, index_b, hashed, pixel = (np.concatenate(column) for column in zip(*found))
    order = np.lexsort((hashed, pixel, index_b))
    _, first = np.unique(index_b[order], return_index=True)
    pick = order[first]
    return index_a[pick], index_b[pick], hashed[pick], pixel[pick]


def _first_rows(values: np.ndarray) -> pd.Series:
    """Row position of each distinct value's first occurrence, indexed by the value."""
    first = ~pd.Series(values).duplicated().to_numpy()
    return pd.Series(np.flatnonzero(first), index=values[first])


def shared_values(values_a: np.ndarray, values_b: np.ndarray, every_b: bool) -> tuple[np.ndarray, np.ndarray]:
    """(index_a, index_b) of values in both: the first A row of each B row's value (of each
    value's first B row unless ``every_b``)."""
    rows_b = np.arange(len(values_b)) if every_b else _first_rows(values_b).to_numpy()
    rows_b = rows_b[pd.Index(values_b[rows_b]).isin(values_a)]
    return _first_rows(values_a).loc[values_b[rows_b]].to_numpy(np.int64), rows_b.astype(np.int64)


def _check_images(parts: Mapping[str, ImageSet]) -> None:
    """Raise a DataError naming a part without decoded images or with another image size."""
    sizes = {name: None if part.images is None else part.images.shape[1:] for name, part in parts.items()}
    first = next(iter(sizes.items()), (None, None))
    for name, size in sizes.items():
        if size is None:
            raise DataError(f"leakage audit: part {name!r} has no decoded images; preprocess it first")
        if size != first[1]:
            raise DataError(f"leakage audit: part {name!r} has {size} images, part {first[0]!r} "
                            f"{first[1]}; preprocess every part to the same image size")


def _findings(kind: str, index_a: np.ndarray, index_b: np.ndarray, hash_distance: float | np.ndarray = np.nan,
              pixel_distance: float | np.ndarray = np.nan) -> pd.DataFrame:
    """Findings of one kind as rows (part names and ids are added by the caller)."""
    return pd.DataFrame({"kind": kind, "index_a": index_a, "index_b": index_b,
                         "hash_distance": np.asarray(hash_distance, np.float64),
                         "pixel_distance": np.asarray(pixel_distance, np.float64)}, index=range(len(index_b)))


def _pair_findings(parts: Mapping[str, ImageSet], prints: Mapping[str, Fingerprints], name_a: str, name_b: str,
                   cfg: AuditConfig) -> pd.DataFrame:
    """Patient, exact and near findings of part B against part A, with hashed ids."""
    a, b = parts[name_a], parts[name_b]
    patients = shared_values(a.manifest["patient_id"].to_numpy(object), b.manifest["patient_id"].to_numpy(object),
                             every_b=False)
    exact = shared_values(prints[name_a].digests, prints[name_b].digests, every_b=True)
    near = near_matches(prints[name_a], prints[name_b], cfg)
    not_exact = ~np.isin(near[1], exact[1])
    frame = pd.concat([_findings("patient", *patients), _findings("exact", *exact, 0.0, 0.0),
                       _findings("near", *(column[not_exact] for column in near))], ignore_index=True)
    ids_a, ids_b = np.asarray(a.ids, object), np.asarray(b.ids, object)
    return frame.assign(part_a=name_a, part_b=name_b, id_a=[hashed_id(i) for i in ids_a[frame["index_a"]]],
                        id_b=[hashed_id(i) for i in ids_b[frame["index_b"]]])


def find_leaks(parts: Mapping[str, ImageSet], cfg: AuditConfig = AuditConfig()) -> pd.DataFrame:
    """One row per finding (``COLUMNS``) between every two different parts, in ``parts`` order."""
    _check_images(parts)
    prints = {name: fingerprints(part.images) for name, part in parts.items()}
    frames = [_pair_findings(parts, prints, a, b, cfg) for a, b in itertools.combinations(parts, 2)]
    return pd.concat(frames, ignore_index=True)[list(COLUMNS)] if frames else pd.DataFrame(columns=list(COLUMNS))


def leak_counts(leaks: pd.DataFrame) -> dict[str, int]:
    """Findings in total per kind (``exact``, ...) and per ``kind/part_a~part_b``."""
    counts = {kind: int((leaks["kind"] == kind).sum()) for kind in KINDS}
    per_pair = leaks.groupby(["kind", "part_a", "part_b"], sort=True).size()
    return counts | {f"{kind}/{a}~{b}": int(n) for (kind, a, b), n in per_pair.items()}


def _summary(leaks: pd.DataFrame) -> str:
    counts = leak_counts(leaks)
    per_pair = ", ".join(f"{key} {n}" for key, n in counts.items() if "/" in key)
    return (f"leakage audit: {counts['exact']} exact duplicate(s), {counts['near']} near duplicate(s) and "
            f"{counts['patient']} shared patient(s) between parts ({per_pair})")


@LEAK_ACTIONS.register("warn")
def warn_on_leaks(leaks: pd.DataFrame) -> None:
    """Warn, in one line with the counts."""
    warnings.warn(_summary(leaks), stacklevel=4)  # the caller of act_on_leaks


@LEAK_ACTIONS.register("fail")
def fail_on_leaks(leaks: pd.DataFrame) -> None:
    """Raise a DataError with the counts, the parts concerned and how to fix it."""
    pairs = ", ".join(sorted(set(leaks["part_a"] + "~" + leaks["part_b"])))
    raise DataError(f"{_summary(leaks)}. Remove the duplicated images or patients from one part of each pair "
                    f"({pairs}), or set audit.action: warn to go on with a warning")


def act_on_leaks(leaks: pd.DataFrame, cfg: AuditConfig) -> None:
    """Apply ``cfg.action`` to the findings; nothing happens when there are none."""
    if len(leaks):
        LEAK_ACTIONS.create(cfg.action, leaks)


def _pair_title(row) -> str:
    distances = "" if np.isnan(row.hash_distance) else \
        f": hash {row.hash_distance:.0f} bits, pixels {row.pixel_distance:.3f}"
    return f"{row.kind} {row.part_a}~{row.part_b}{distances}"


def leak_pairs_grid(parts: Mapping[str, ImageSet], leaks: pd.DataFrame, n: int = 8) -> Image.Image | None:
    """Up to ``n`` findings (kinds interleaved) as image pairs titled by kind, parts, distances and
    hashed ids, two pairs a row; None when there is none to draw."""
    shown = leaks.assign(rank=leaks.groupby("kind").cumcount()).sort_values(["rank", "kind"], kind="stable").head(n)
    if shown.empty:
        return None
    cols = min(2, len(shown))
    rows = -(-len(shown) // cols)
    fig = Figure(figsize=(5.2 * cols, 3.0 * rows))
    for sub, row in zip(fig.subfigures(rows, cols, squeeze=False).flat, shown.itertuples()):
        sub.suptitle(_pair_title(row), fontsize=8)
        for ax, part, index, hashed in zip(sub.subplots(1, 2), (row.part_a, row.part_b),
                                           (row.index_a, row.index_b), (row.id_a, row.id_b)):
            ax.imshow(parts[part].images[index], cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{part} {hashed}", fontsize=7)
            ax.axis("off")
    return figure_image(fig)
