"""nemo_aesthetic: aesthetic scores for image-text datasets at scale, on Dask (CPU or GPU)."""
from nemo_aesthetic.distributed import get_client, load_object_on_worker

__all__ = ["get_client", "load_object_on_worker", "ImageTextPairDataset", "TimmImageEmbedder",
           "AestheticClassifier", "NsfwClassifier"]
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
    raise AttributeError(f"module 'nemo_aesthetic' has no attribute {name!r}")
