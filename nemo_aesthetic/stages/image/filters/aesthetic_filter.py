"""ImageAestheticFilterStage: LAION aesthetic score, keep ``score >= score_threshold``."""
from __future__ import annotations

from dataclasses import dataclass

from nemo_aesthetic.image.classifiers.aesthetic import HEADS, resolve_head, threshold_warning
from nemo_aesthetic.models.aesthetics import AestheticScorer
from nemo_aesthetic.stages.base import logger
from nemo_aesthetic.stages.image.filters.base import BaseFilterStage


@dataclass
class ImageAestheticFilterStage(BaseFilterStage):
    """Set ``aesthetic_score`` (roughly 1-10); keep images with ``score >= score_threshold``.
    Weights: see :class:`~nemo_aesthetic.models.aesthetics.AestheticScorer`. Beyond upstream,
    ``head``: "v2" (default) or a LAION-Aesthetics V1 head ("v1": the one of the pipeline's
    ImageEmbeddingStage backbone)."""

    name: str = "image_aesthetic_filter"
    head: str = "v2"
    score_attribute, label = "aesthetic_score", "Aesthetic"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.concrete_head = resolve_head(self.head)
        _warn_once_about_the_scale(self.score_threshold)

    def follow_backbone(self, model_name: str, embedding_dim: int) -> None:
        self.concrete_head = resolve_head(self.head, model_name)
        self.expected_dim, self.expected_embeddings = HEADS[self.concrete_head][1:]
        super().follow_backbone(model_name, embedding_dim)

    def _head(self) -> dict:
        return {} if self.concrete_head == "v2" else {"head": self.concrete_head}  # v2: upstream's exact call

    def setup_on_node(self, node_info=None, worker_metadata=None) -> None:
        AestheticScorer.download_weights_on_node(self.model_dir, **self._head())

    def setup(self, worker_metadata=None) -> None:
        self.model = AestheticScorer(model_dir=self.model_dir, **self._head())
        self.model.setup()
        if self.verbose:
            logger.info("Initialized aesthetic scoring model")

    def keep(self, score: float) -> bool:
        return score >= self.score_threshold


_WARNED_THRESHOLDS: set[float] = set()


def _warn_once_about_the_scale(threshold: float) -> None:
    """Upstream's default ``score_threshold=0.5`` (kept) keeps nearly every image on the 0-10 scale:
    say so once per threshold and process, where the stage is made."""
    warning = threshold_warning(threshold, "score_threshold")
    if warning and threshold not in _WARNED_THRESHOLDS:
        _WARNED_THRESHOLDS.add(threshold)
        logger.warning(warning)
