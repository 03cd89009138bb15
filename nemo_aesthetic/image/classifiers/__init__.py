"""Classifiers that score image embeddings."""
from nemo_aesthetic.image.classifiers.aesthetic import AestheticClassifier
from nemo_aesthetic.image.classifiers.base import ImageClassifier
from nemo_aesthetic.image.classifiers.nsfw import NsfwClassifier

__all__ = ["AestheticClassifier", "ImageClassifier", "NsfwClassifier"]
