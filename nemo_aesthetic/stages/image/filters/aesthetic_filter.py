"""ImageAestheticFilterStage: LAION aesthetic score, keep ``score >= score_threshold``."""
from __future__ import annotations

from dataclasses import dataclass

from nemo_aesthetic.models.aesthetics import AestheticScorer
from nemo_aesthetic.stages.base import logger
from nemo_aesthetic.stages.image.filters.base import BaseFilterStage


@dataclass
class ImageAestheticFilterStage(BaseFilterStage):
    """Set ``aesthetic_score`` (roughly 1-10); keep images with ``score >= score_threshold``.

    Weights: see :class:`~nemo_aesthetic.models.aesthetics.AestheticScorer` (``model_dir`` in
    NeMo Curator 1.x's layout or holding ``sac+logos+ava1-l14-linearMSE.pth``, else
    ``$NEMO_AESTHETIC_HOME``'s verified copy).
    """

    name: str = "image_aesthetic_filter"
    score_attribute = "aesthetic_score"

    def setup_on_node(self, node_info=None, worker_metadata=None) -> None:
        AestheticScorer.download_weights_on_node(self.model_dir)

    def setup(self, worker_metadata=None) -> None:
        self.model = AestheticScorer(model_dir=self.model_dir)
        self.model.setup()
        if self.verbose:
            logger.info("Initialized aesthetic scoring model")

    label = "Aesthetic"

    def report(self, message: str) -> None:
        logger.info(message)

    def keep(self, score: float) -> bool:
        return score >= self.score_threshold
