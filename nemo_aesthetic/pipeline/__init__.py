"""The stage front's Pipeline (NeMo Curator 1.x's ``nemo_curator.pipeline``)."""
from nemo_aesthetic.pipeline.pipeline import Pipeline

__all__ = ["Pipeline"]
