"""Image embedders: tar shards in, an embedding column (and fused classifier scores) out."""
from nemo_aesthetic.image.embedders.base import ImageEmbedder
from nemo_aesthetic.image.embedders.timm import TimmImageEmbedder

__all__ = ["ImageEmbedder", "TimmImageEmbedder"]
