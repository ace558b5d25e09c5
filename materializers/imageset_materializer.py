"""Stores an ImageSet in its one format (``cxr.data.imageset.save_imageset``) plus a preview grid."""

from __future__ import annotations

import os
from typing import Any, ClassVar, Dict, Tuple, Type

from zenml.enums import ArtifactType, VisualizationType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from cxr.data.imageset import ImageSet, load_imageset, save_imageset
from cxr.metrics.plots import image_grid

PREVIEW = "preview.png"


class ImageSetMaterializer(BaseMaterializer):
    """ImageSet <-> ``manifest.parquet`` + ``images.npy`` + ``meta.json`` (+ a preview grid)."""

    ASSOCIATED_TYPES: ClassVar[Tuple[Type[Any], ...]] = (ImageSet,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA

    def _path(self, name: str) -> str:
        return os.path.join(self.uri, name)

    def load(self, data_type: Type[Any]) -> ImageSet:
        return load_imageset(self.uri, fileio.open, fileio.exists)

    def save(self, data: ImageSet) -> None:
        # a local artifact store gets plain files, so that shards can be hard-linked out of scratch
        save_imageset(data, self.uri, open if os.path.isdir(self.uri) else fileio.open)

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
