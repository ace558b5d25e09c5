"""Stores a Checkpoint as safetensors weights + JSON metadata (never a pickled module)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any, ClassVar, Dict, Tuple, Type

from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from cxr.models.checkpoint import (META_FILE, WEIGHTS_FILE, AnyCheckpoint, BackboneCheckpoint, Checkpoint,
                                   load_checkpoint, save_checkpoint)


class CheckpointMaterializer(BaseMaterializer):
    """Checkpoint / BackboneCheckpoint <-> ``model.safetensors`` + ``meta.json``."""

    ASSOCIATED_TYPES: ClassVar[Tuple[Type[Any], ...]] = (Checkpoint, BackboneCheckpoint)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def load(self, data_type: Type[Any]) -> AnyCheckpoint:
        with tempfile.TemporaryDirectory() as tmp:
            for name in (WEIGHTS_FILE, META_FILE):
                fileio.copy(os.path.join(self.uri, name), os.path.join(tmp, name))
            return load_checkpoint(tmp, data_type)

    def save(self, data: AnyCheckpoint) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(data, tmp)
            for name in (WEIGHTS_FILE, META_FILE):
                fileio.copy(os.path.join(tmp, name), os.path.join(self.uri, name), overwrite=True)

    def extract_metadata(self, data: AnyCheckpoint) -> Dict[str, Any]:
        meta = {"parameters": int(sum(t.numel() for t in data.state_dict.values()))}
        if isinstance(data, BackboneCheckpoint):
            return meta | data.meta.model_dump()
        return meta | {"backbone": data.meta.model.backbone, "head": data.meta.model.head,
                       "image_size": data.meta.image_size, "labels": data.meta.label_names,
                       "epoch": data.meta.epoch, **{k: float(v) for k, v in data.meta.val_metrics.items()}}

    def compute_content_hash(self, data: AnyCheckpoint) -> str:
        digest = hashlib.blake2b(digest_size=20)
        digest.update(data.meta.model_dump_json().encode())
        for name in sorted(data.state_dict):
            digest.update(name.encode())
            digest.update(data.state_dict[name].numpy().tobytes())
        return digest.hexdigest()
