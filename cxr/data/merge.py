"""Several datasets as one ImageSet (NIH + CheXpert + MIMIC, as TorchXRayVision merges them): findings
harmonised by name to their union, a finding a dataset does not label masked (unknown) for its images,
ids and patients prefixed by the dataset's name so that no two datasets' patients merge or cross
splits, and a ``dataset`` column that per-dataset metrics group by."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from cxr.data.imageset import DATASET_COLUMN, ImageSet
from cxr.errors import DataError


def harmonised_names(names: tuple[str, ...], finding_map: Mapping[str, str], dataset: str) -> list[str]:
    """``names`` under ``finding_map`` (e.g. ``Effusion`` -> ``Pleural Effusion``); two mapped onto one
    name in the same dataset is an error naming them."""
    mapped = [finding_map.get(name, name) for name in names]
    clashes = sorted({m for m in mapped if mapped.count(m) > 1})
    if clashes:
        raise DataError(f"data.finding_map maps several findings of {dataset!r} onto {clashes}: "
                        f"{[n for n, m in zip(names, mapped) if m in clashes]}")
    return mapped


def merge_datasets(parts: Mapping[str, ImageSet], finding_map: Mapping[str, str] | None = None) -> ImageSet:
    """One ImageSet of ``parts`` (dataset name -> its set, undecoded), in that order."""
    finding_map = finding_map or {}
    if len(parts) < 2:
        raise DataError(f"data.sources merges at least two datasets, got {list(parts)}")
    names = {name: harmonised_names(part.label_names, finding_map, name) for name, part in parts.items()}
    union = list(dict.fromkeys(label for labels in names.values() for label in labels))
    frames, labels, masks, skipped = [], [], [], []
    for name, part in parts.items():
        if part.images is not None:
            raise DataError(f"dataset {name!r} is already decoded: merge datasets before preprocessing")
        columns = [union.index(label) for label in names[name]]
        label, mask = np.zeros((len(part), len(union)), np.float32), np.zeros((len(part), len(union)), bool)
        label[:, columns], mask[:, columns] = part.labels, part.mask
        frame = part.manifest.assign(id=name + "/" + part.manifest["id"].astype(str),
                                     patient_id=name + "/" + part.manifest["patient_id"].astype(str),
                                     **{DATASET_COLUMN: name})
        frames.append(frame)
        labels.append(label)
        masks.append(mask)
        skipped += list(part.skipped)
    manifest = pd.concat(frames, ignore_index=True).fillna("")
    return ImageSet(manifest, tuple(union), np.concatenate(labels), np.concatenate(masks), None, tuple(skipped))
