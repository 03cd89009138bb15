"""Datasets of image-text pairs stored as WebDataset shards with Parquet metadata."""
from nemo_aesthetic.datasets.image_text_pair import ImageTextPairDataset

__all__ = ["ImageTextPairDataset"]
