"""nemo_aesthetic: aesthetic scores for image-text datasets at scale, on Dask (CPU or GPU)."""
import dask

from nemo_aesthetic.distributed import get_client, load_object_on_worker

# As NeMo Curator 0.x does on import: dask would otherwise turn object columns into strings, so a
# metadata frame a user builds with ``dd.from_pandas`` (embeddings as lists or arrays) would have
# its embeddings written as text such as "[0.1 0.2 ... 0.3]" - truncated, and lost.
dask.config.set({"dataframe.convert-string": False})

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
