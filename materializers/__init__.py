"""ZenML materializers for the project's artifact types."""

from materializers.checkpoint_materializer import CheckpointMaterializer
from materializers.feature_table_materializer import FeatureTableMaterializer
from materializers.imageset_materializer import ImageSetMaterializer

__all__ = ["CheckpointMaterializer", "FeatureTableMaterializer", "ImageSetMaterializer"]
