"""Datasets of image-text pairs stored as WebDataset shards with Parquet metadata."""
from nemo_aesthetic.datasets.doc_dataset import DocumentDataset
from nemo_aesthetic.datasets.image_text_pair import ImageTextPairDataset

__all__ = ["DocumentDataset", "ImageTextPairDataset"]
