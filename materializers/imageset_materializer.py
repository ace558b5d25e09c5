"""Stores an ImageSet as a parquet manifest, a .npy image array and a JSON sidecar."""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar, Dict, Tuple, Type

import numpy as np
import pandas as pd
from zenml.enums import ArtifactType, VisualizationType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from cxr.data.imageset import ImageSet
from cxr.metrics.plots import image_grid

MANIFEST, IMAGES, META, PREVIEW = "manifest.parquet", "images.npy", "meta.json", "preview.png"


class ImageSetMaterializer(BaseMaterializer):
    """ImageSet <-> ``manifest.parquet`` + ``images.npy`` + ``meta.json`` (+ a preview grid)."""

    ASSOCIATED_TYPES: ClassVar[Tuple[Type[Any], ...]] = (ImageSet,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA

    def _path(self, name: str) -> str:
        return os.path.join(self.uri, name)

    def load(self, data_type: Type[Any]) -> ImageSet:
        with fileio.open(self._path(META), "r") as f:
            meta = json.load(f)
        with fileio.open(self._path(MANIFEST), "rb") as f:
            frame = pd.read_parquet(f)
        images = None
        if fileio.exists(self._path(IMAGES)):
            with fileio.open(self._path(IMAGES), "rb") as f:
                images = np.load(f, allow_pickle=False)
        return ImageSet.from_label_frame(frame, meta["label_names"], images, meta["skipped"])

    def save(self, data: ImageSet) -> None:
        with fileio.open(self._path(META), "w") as f:
            json.dump({"label_names": list(data.label_names), "skipped": list(data.skipped)}, f)
        with fileio.open(self._path(MANIFEST), "wb") as f:
            data.label_frame().to_parquet(f, index=False)
        if data.images is not None:
            with fileio.open(self._path(IMAGES), "wb") as f:
                np.save(f, np.ascontiguousarray(data.images), allow_pickle=False)

    def save_visualizations(self, data: ImageSet) -> Dict[str, VisualizationType]:
        if data.images is None or len(data) == 0:
            return {}
        with fileio.open(self._path(PREVIEW), "wb") as f:
            image_grid(data).save(f, format="PNG")
        return {self._path(PREVIEW): VisualizationType.IMAGE}

    def extract_metadata(self, data: ImageSet) -> Dict[str, Any]:
        meta: Dict[str, Any] = {"images": len(data), "labels": list(data.label_names),
                                "patients": int(data.manifest["patient_id"].nunique()),
                                "skipped": len(data.skipped)}
        for split, count in data.manifest["split"].value_counts().items():
            meta[f"split_{split}"] = int(count)
        for j, name in enumerate(data.label_names):
            meta[f"positives_{name}"] = int(((data.labels[:, j] > 0.5) & data.mask[:, j]).sum())
        if data.images is not None:
            meta["image_shape"] = list(data.images.shape[1:])
        return meta

    def compute_content_hash(self, data: ImageSet) -> str:
        return data.fingerprint()
