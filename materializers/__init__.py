"""ZenML materializers for the project's artifact types."""

import functools

from zenml.utils import source_utils

from materializers.checkpoint_materializer import CheckpointMaterializer
from materializers.feature_table_materializer import FeatureTableMaterializer
from materializers.imageset_materializer import ImageSetMaterializer

__all__ = ["CheckpointMaterializer", "FeatureTableMaterializer", "ImageSetMaterializer"]


def cache_package_lookup() -> None:
    """Cache ZenML's package lookup for artifact types. ZenML 0.98 calls
    ``importlib.metadata.packages_distributions()`` for every stored artifact whose type comes from
    an installed package (pandas, PIL, numpy), which re-reads every distribution's file list: about
    1.2 s a call beside torch, more than half of a small pipeline run. Installed packages do not
    change while a process runs."""
    if not hasattr(source_utils._get_package_for_module, "cache_info"):
        source_utils._get_package_for_module = functools.lru_cache(maxsize=None)(
            source_utils._get_package_for_module)


cache_package_lookup()
