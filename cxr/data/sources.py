"""Readers that turn a folder, table or archive of chest X-rays into an ImageSet.

Four sources: a class-per-folder tree, a flat folder of unlabelled images, a CSV table plus
an image folder, and a MedMNIST ``.npz``. Every reader checks its files up front (missing,
empty, duplicate ids) and raises a ``DataError`` that names the file or row at fault.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cxr.data.decode import to_gray_batch
from cxr.data.imageset import ImageSet, make_manifest
from cxr.errors import DataError, list_problems

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_POSITIVE = {"1", "1.0", "true", "yes"}
_NEGATIVE = {"0", "0.0", "false", "no"}


def list_images(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    exts = {e.lower() for e in extensions}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)


def patient_ids_from_names(ids: Sequence[str], pattern: str | None) -> list[str]:
    """Patient id from each image id via the first group (or whole match) of ``pattern``.

    Without a pattern, or where it does not match, the image is its own patient.
    """
    if pattern is None:
        return list(ids)
    regex = re.compile(pattern)
    out = []
    for image_id in ids:
        match = regex.search(image_id)
        out.append((match.group(1) if match.groups() else match.group(0)) if match else image_id)
    return out


def read_csv_strings(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """The CSV (or .csv.gz) at ``path`` as strings, blanks kept as empty strings; a file that is
    not in ``encoding`` raises a DataError naming the file, the offending byte and the fix."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding)
    except UnicodeDecodeError as error:
        bad = error.object[error.start:error.end]
        raise DataError(f"{path} is not valid {encoding} text (it holds the byte(s) {bad!r}); set the table's "
                        f"encoding, e.g. data.encoding: latin-1") from error


def check_files(paths: Sequence[str], ids: Sequence[str]) -> None:
    """Raise one DataError listing every missing or zero-byte file and duplicate id."""
    problems = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            problems.append(f"missing image file: {p}")
        elif p.stat().st_size == 0:
            problems.append(f"zero-byte image file: {p}")
    counts = pd.Series(list(ids)).value_counts()
    problems += [f"duplicate image id {i!r} ({n} times)" for i, n in counts[counts > 1].items()]
    if problems:
        raise DataError("bad image input:" + list_problems(problems))


def read_class_folders(root: str | Path, negative_class: str | None = None,
                       patient_id_pattern: str | None = None,
                       extensions: Sequence[str] = IMAGE_EXTENSIONS) -> ImageSet:
    """One sub-folder per class (e.g. ``NORMAL/``, ``PNEUMONIA/``).

    Labels are one indicator column per class, named after the folder in lower case; the
    ``negative_class`` folder (e.g. NORMAL) gets no column, so NORMAL/PNEUMONIA gives one
    binary label ``pneumonia``. Image ids are file stems.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"class-folder root {root} is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if negative_class is not None and negative_class not in classes:
        raise DataError(f"negative_class {negative_class!r} is not a folder of {root}: {classes}")
    positives = [c for c in classes if c != negative_class]
    if len(classes) < 2 or not positives:
        raise DataError(f"{root} needs at least two class folders, found {classes}")
    files, class_of = [], []
    for name in classes:
        found = list_images(root / name, extensions)
        if not found:
            raise DataError(f"class folder {root / name} holds no images ({', '.join(extensions)})")
        files += found
        class_of += [name] * len(found)
    ids = [f.stem for f in files]
    check_files([str(f) for f in files], ids)
    labels = np.array([[c == p for p in positives] for c in class_of], dtype=np.float32)
    manifest = make_manifest(ids, files, patient_ids_from_names(ids, patient_id_pattern))
    return ImageSet(manifest, tuple(p.lower() for p in positives), labels,
                    np.ones_like(labels, dtype=bool))


def read_image_folder(root: str | Path, label_names: Sequence[str] = (),
                      extensions: Sequence[str] = IMAGE_EXTENSIONS) -> ImageSet:
    """A flat folder of unlabelled images (test/inference); labels all unknown."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} is not a directory")
    files = list_images(root, extensions)
    if not files:
        raise DataError(f"image folder {root} holds no images ({', '.join(extensions)})")
    ids = [f.stem for f in files]
    check_files([str(f) for f in files], ids)
    shape = (len(files), len(label_names))
    return ImageSet(make_manifest(ids, files), tuple(label_names),
                    np.zeros(shape, np.float32), np.zeros(shape, bool))


def parse_binary_labels(table: pd.DataFrame, columns: Sequence[str],
                        source: str) -> tuple[np.ndarray, np.ndarray]:
    """0/1 label matrix and known-mask from text cells; blank means unknown.

    Raises a DataError naming the file, line and column of any other value.
    """
    labels = np.zeros((len(table), len(columns)), np.float32)
    mask = np.zeros_like(labels, dtype=bool)
    problems = []
    for j, column in enumerate(columns):
        cells = table[column].astype("string").str.strip().str.lower()
        for i, cell in enumerate(cells):
            if pd.isna(cell) or cell == "":
                continue
            if cell in _POSITIVE or cell in _NEGATIVE:
                labels[i, j], mask[i, j] = float(cell in _POSITIVE), True
            else:
                problems.append(f"{source} line {i + 2}, column {column!r}: "
                                f"unknown label value {table[column].iloc[i]!r} (use 1, 0 or blank)")
    if problems:
        raise DataError("bad label values:" + list_problems(problems))
    return labels, mask


def read_csv_table(csv_path: str | Path, image_dir: str | Path, id_column: str = "id",
                   label_columns: Sequence[str] | None = None, path_column: str | None = None,
                   patient_column: str | None = None, image_suffix: str = "", encoding: str = "utf-8") -> ImageSet:
    """A CSV with one row per image plus the folder holding the images.

    The image file is ``image_dir / row[path_column]`` if ``path_column`` is set, else
    ``image_dir / (row[id_column] + image_suffix)``. ``label_columns`` default to every
    column that is not the id, path or patient column; cells are 1, 0 or blank (unknown).
    ``encoding`` is the table's text encoding (hospital exports are often latin-1).
    """
    csv_path, image_dir = Path(csv_path), Path(image_dir)
    if not csv_path.is_file():
        raise DataError(f"label table {csv_path} does not exist")
    table = read_csv_strings(csv_path, encoding)
    meta = [c for c in (id_column, path_column, patient_column) if c]
    missing = [c for c in meta + list(label_columns or []) if c not in table.columns]
    if missing:
        raise DataError(f"{csv_path} lacks columns {missing}; it has {list(table.columns)}")
    if table.empty:
        raise DataError(f"{csv_path} has no rows")
    columns = list(label_columns) if label_columns is not None \
        else [c for c in table.columns if c not in meta]
    ids = table[id_column].astype(str).tolist()
    names = table[path_column].tolist() if path_column else [i + image_suffix for i in ids]
    paths = [str(image_dir / n) for n in names]
    check_files(paths, ids)
    labels, mask = parse_binary_labels(table, columns, str(csv_path))
    patients = table[patient_column].astype(str).tolist() if patient_column else None
    return ImageSet(make_manifest(ids, paths, patients), tuple(columns), labels, mask)


def read_medmnist_npz(npz_path: str | Path, split: str = "train",
                      label_names: Sequence[str] | None = None) -> ImageSet:
    """A MedMNIST archive (keys ``<split>_images``, ``<split>_labels``), images kept decoded.

    Labels of shape (N, 1) with values 0/1 stay binary; (N, 1) with more classes become
    one indicator column per class; (N, L) is taken as multi-label.
    """
    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise DataError(f"MedMNIST archive {npz_path} does not exist")
    with np.load(npz_path) as archive:
        keys = (f"{split}_images", f"{split}_labels")
        missing = [k for k in keys if k not in archive.files]
        if missing:
            raise DataError(f"{npz_path} lacks keys {missing}; it has {archive.files}")
        images, raw = archive[keys[0]], archive[keys[1]].astype(np.int64)
    if images.ndim == 4:
        images = to_gray_batch(images)
    if raw.ndim == 1:
        raw = raw[:, None]
    if raw.shape[1] == 1 and raw.max() > 1:
        raw = (raw == np.arange(raw.max() + 1)[None, :]).astype(np.int64)
    labels = raw.astype(np.float32)
    names = tuple(label_names) if label_names else tuple(f"label_{j}" for j in range(labels.shape[1]))
    if len(names) != labels.shape[1]:
        raise DataError(f"{npz_path}: {len(names)} label_names for {labels.shape[1]} label columns")
    ids = [f"{split}_{i:06d}" for i in range(len(images))]
    paths = [f"{npz_path}#{split}/{i}" for i in range(len(images))]
    return ImageSet(make_manifest(ids, paths), names, labels, np.ones_like(labels, dtype=bool),
                    images=images)
