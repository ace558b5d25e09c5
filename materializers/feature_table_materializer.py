"""Stores a FeatureTable as a parquet of raw features plus the scaler as JSON."""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar, Dict, Tuple, Type

import numpy as np
import pandas as pd
from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from cxr.features.handcrafted import FeatureTable

VALUES, SCALER = "features.parquet", "scaler.json"


class FeatureTableMaterializer(BaseMaterializer):
    """FeatureTable <-> ``features.parquet`` + ``scaler.json`` (mean and scale per feature)."""

    ASSOCIATED_TYPES: ClassVar[Tuple[Type[Any], ...]] = (FeatureTable,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA

    def load(self, data_type: Type[Any]) -> FeatureTable:
        with fileio.open(os.path.join(self.uri, VALUES), "rb") as f:
            values = pd.read_parquet(f)
        with fileio.open(os.path.join(self.uri, SCALER), "r") as f:
            scaler = json.load(f)
        return FeatureTable(values, np.asarray(scaler["mean"]), np.asarray(scaler["scale"]))

    def save(self, data: FeatureTable) -> None:
        with fileio.open(os.path.join(self.uri, VALUES), "wb") as f:
            data.values.to_parquet(f)
        with fileio.open(os.path.join(self.uri, SCALER), "w") as f:
            json.dump({"features": list(data.values.columns), "mean": data.mean.tolist(),
                       "scale": data.scale.tolist()}, f)

    def extract_metadata(self, data: FeatureTable) -> Dict[str, Any]:
        return {"images": len(data.values), "features": len(data.values.columns)}
