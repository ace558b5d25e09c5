"""Readers that turn a folder, table or archive of chest X-rays into an ImageSet.

Four sources: a class-per-folder tree, a flat folder of unlabelled images, a CSV table plus
an image folder, and a MedMNIST ``.npz``. Every reader checks its files up front (missing,
empty, duplicate ids) and raises a ``DataError`` that names the file or row at fault.

Folders may hold DICOM files (``.dcm``, or any name with the ``DICM`` marker): their image and
patient ids are keyed hashes of SOPInstanceUID and PatientID (``cxr.data.dicom``), and a
``view_positions`` filter reads their ViewPosition tag.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cxr.data.decode import IMAGE_EXTENSIONS, is_dicom_file, to_gray_batch
from cxr.data.dicom import id_salt, read_header
from cxr.data.imageset import HEADER_COLUMNS, ImageSet, make_manifest
from cxr.errors import DataError, list_problems

_POSITIVE = {"1", "1.0", "true", "yes"}
_NEGATIVE = {"0", "0.0", "false", "no"}


def list_images(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS, recursive: bool = False) -> list[Path]:
    """Image and DICOM files inside ``folder`` (and its sub-folders when ``recursive``), sorted.

    A broken symlink raises a DataError naming it; without ``recursive``, so do sub-folders
    that hold images, which would otherwise be left out without a word.
    """
    exts = {e.lower() for e in extensions}
    entries = sorted(folder.rglob("*") if recursive else folder.iterdir())
    broken = [p for p in entries if p.is_symlink() and not p.exists()]
    if broken:
        raise DataError(f"broken symlink(s) in {folder}:" + list_problems([str(p) for p in broken]))
    if not recursive:
        nested = [p for p in entries if p.is_dir() and list_images(p, extensions, recursive=True)]
        if nested:
            raise DataError(f"{folder} has sub-folders holding images, which are not read: set data.recursive: "
                            "true to read them:" + list_problems([str(p) for p in nested]))
    return [p for p in entries if p.is_file() and (p.suffix.lower() in exts or is_dicom_file(p))]


def file_ids(files: Sequence[Path], root: Path, patient_id_pattern: str | None = None,
             view_positions: Sequence[str] | None = None, salt_file: str | None = None,
             ) -> tuple[list[str], list[str], np.ndarray, pd.DataFrame]:
    """Image ids, patient ids, the kept-row mask and the ``HEADER_COLUMNS`` of files under ``root``.

    A DICOM file's ids are keyed hashes of its SOPInstanceUID and PatientID and its header
    columns its whitelisted tags; any other file's id is its path below ``root`` without
    suffix, its patient from ``patient_id_pattern``, its header columns blank.
    ``view_positions`` keeps only DICOM files whose ViewPosition is listed.
    """
    dicom = [is_dicom_file(p) for p in files]
    salt = id_salt(salt_file) if any(dicom) else b""
    headers = [read_header(p, salt) if d else None for p, d in zip(files, dicom)]
    names = [p.relative_to(root).with_suffix("").as_posix() for p in files]
    ids = [h["image_id"] if h else name for h, name in zip(headers, names)]
    named = patient_ids_from_names(ids, patient_id_pattern)
    patients = [h["patient_id"] if h else patient for h, patient in zip(headers, named)]
    keep = np.ones(len(files), bool)
    if view_positions is not None:
        if not all(dicom):
            raise DataError(f"view_positions filter asked for, but {files[dicom.index(False)]} is not a DICOM file "
                            "(only DICOM files carry a view position)")
        wanted = {v.upper() for v in view_positions}
        keep = np.array([h["view"] in wanted for h in headers], bool)
    tags = pd.DataFrame([{c: (h or {}).get(c, "") for c in HEADER_COLUMNS} for h in headers], columns=list(HEADER_COLUMNS))
    return ids, patients, keep, tags


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


def check_cells(table: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """Raise one DataError naming the line and column of every blank cell in ``columns``."""
    problems = [f"{source} line {i + 2}: empty {column!r} cell" for column in columns
                for i in np.flatnonzero(table[column].astype(str).str.strip().eq("").to_numpy())]
    if problems:
        raise DataError("rows without an image:" + list_problems(problems))


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
                       extensions: Sequence[str] = IMAGE_EXTENSIONS, recursive: bool = False,
                       view_positions: Sequence[str] | None = None, salt_file: str | None = None) -> ImageSet:
    """One sub-folder per class (e.g. ``NORMAL/``, ``PNEUMONIA/``).

    Labels are one indicator column per class, named after the folder in lower case; the
    ``negative_class`` folder (e.g. NORMAL) gets no column, so NORMAL/PNEUMONIA gives one
    binary label ``pneumonia``. Image ids are paths below the class folder without suffix (the
    file stem unless ``recursive``), or keyed hashes for DICOM files (``file_ids``).
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
    ids, patients, tags = [], [], []
    for name in classes:
        found = list_images(root / name, extensions, recursive)
        if not found:
            raise DataError(f"class folder {root / name} holds no images ({', '.join(extensions)} or DICOM)")
        found_ids, found_patients, keep, found_tags = file_ids(found, root / name, patient_id_pattern,
                                                               view_positions, salt_file)
        if not keep.any():
            raise DataError(f"class folder {root / name} holds no images of the views {list(view_positions or [])}")
        files += [f for f, k in zip(found, keep) if k]
        ids += [i for i, k in zip(found_ids, keep) if k]
        patients += [p for p, k in zip(found_patients, keep) if k]
        tags.append(found_tags[keep])
        class_of += [name] * int(keep.sum())
    check_files([str(f) for f in files], ids)
    labels = np.array([[c == p for p in positives] for c in class_of], dtype=np.float32)
    return ImageSet(with_header_columns(make_manifest(ids, files, patients), pd.concat(tags)),
                    tuple(p.lower() for p in positives), labels, np.ones_like(labels, dtype=bool))


def read_image_folder(root: str | Path, label_names: Sequence[str] = (),
                      extensions: Sequence[str] = IMAGE_EXTENSIONS, recursive: bool = False,
                      view_positions: Sequence[str] | None = None, salt_file: str | None = None) -> ImageSet:
    """A folder of unlabelled images or DICOM files (test/inference); labels all unknown."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} is not a directory")
    files = list_images(root, extensions, recursive)
    if not files:
        raise DataError(f"image folder {root} holds no images ({', '.join(extensions)} or DICOM)")
    ids, patients, keep, tags = file_ids(files, root, None, view_positions, salt_file)
    if not keep.any():
        raise DataError(f"image folder {root} holds no images of the views {list(view_positions or [])}")
    files, ids, patients = ([x for x, k in zip(column, keep) if k] for column in (files, ids, patients))
    check_files([str(f) for f in files], ids)
    shape = (len(files), len(label_names))
    return ImageSet(with_header_columns(make_manifest(ids, files, patients), tags[keep]), tuple(label_names),
                    np.zeros(shape, np.float32), np.zeros(shape, bool))


def with_header_columns(manifest: pd.DataFrame, tags: pd.DataFrame) -> pd.DataFrame:
    """``manifest`` plus the whitelisted DICOM tag columns, when any row has a value."""
    if not tags.astype(bool).to_numpy().any():
        return manifest
    return pd.concat([manifest, tags.reset_index(drop=True)], axis=1)


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
    check_cells(table, [id_column] + ([path_column] if path_column else []), str(csv_path))
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
