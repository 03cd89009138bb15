"""``nemo_curator.datasets.image_text_pair_dataset`` under its legacy path: re-exports
:class:`~nemo_aesthetic.datasets.image_text_pair.ImageTextPairDataset`, the one implementation."""
from nemo_aesthetic.datasets.image_text_pair import ImageTextPairDataset

__all__ = ["ImageTextPairDataset"]
