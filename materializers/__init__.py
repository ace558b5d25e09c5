"""ZenML materializers for the project's artifact types."""

from materializers.checkpoint_materializer import CheckpointMaterializer
from materializers.imageset_materializer import ImageSetMaterializer

__all__ = ["CheckpointMaterializer", "ImageSetMaterializer"]
