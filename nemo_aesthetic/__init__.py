"""nemo_aesthetic: aesthetic scores for image-text datasets at scale, on Dask (CPU or GPU)."""
from nemo_aesthetic.distributed import get_client, load_object_on_worker

# No dask config is changed here (NeMo Curator 0.x switches dask's string conversion off for the whole
# process on import): our own graphs say their dtypes (engine.partitions.from_shards).

__all__ = ["get_client", "load_object_on_worker", "ImageTextPairDataset", "TimmImageEmbedder",
           "AestheticClassifier", "NsfwClassifier", "ClusteringModel", "SemanticClusterLevelDedup"]
__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so `import nemo_aesthetic` (and the CLI's --help) does not pay for torch and timm.
    if name == "ImageTextPairDataset":
        from nemo_aesthetic.datasets import ImageTextPairDataset

        return ImageTextPairDataset
    if name == "TimmImageEmbedder":
        from nemo_aesthetic.image.embedders import TimmImageEmbedder

        return TimmImageEmbedder
    if name in ("AestheticClassifier", "NsfwClassifier"):
        from nemo_aesthetic.image import classifiers

        return getattr(classifiers, name)
    if name in ("ClusteringModel", "SemanticClusterLevelDedup"):
        from nemo_aesthetic.modules import semantic_dedup

        return getattr(semantic_dedup, name)
    raise AttributeError(f"module 'nemo_aesthetic' has no attribute {name!r}")
