"""ImageNSFWFilterStage: LAION CLIP-based NSFW probability, keep ``score < score_threshold``."""
from __future__ import annotations

from dataclasses import dataclass

from nemo_aesthetic.models.nsfw import NSFWScorer
from nemo_aesthetic.stages.base import logger
from nemo_aesthetic.stages.image.filters.base import BaseFilterStage


@dataclass
class ImageNSFWFilterStage(BaseFilterStage):
    """Set ``nsfw_score`` (probability 0-1); keep images with ``score < score_threshold``.
    Weights: see :class:`~nemo_aesthetic.models.nsfw.NSFWScorer`."""

    name: str = "image_nsfw_filter"
    score_attribute, label = "nsfw_score", "NSFW"

    def setup_on_node(self, node_info=None, worker_metadata=None) -> None:
        NSFWScorer.download_weights_on_node(self.model_dir)

    def setup(self, worker_metadata=None) -> None:
        self.model = NSFWScorer(model_dir=self.model_dir)
        self.model.setup()
        if self.verbose:
            logger.info("Initialized NSFW scoring model")

    def keep(self, score: float) -> bool:
        return score < self.score_threshold
