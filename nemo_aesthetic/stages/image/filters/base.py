"""BaseFilterStage: score each batch's embeddings with a model, keep what ``keep`` says."""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from nemo_aesthetic.stages.base import logger
from nemo_aesthetic.stages.image.base import ImageModelStage
from nemo_aesthetic.tasks import ImageBatch


@dataclass
class BaseFilterStage(ImageModelStage):
    """Sets ``score_attribute`` on every image from ``self.model(embeddings)`` (set up by the
    subclass's ``setup``), ``model_inference_batch_size`` at a time, and returns a new ImageBatch
    of the images ``keep`` accepts. Verbose lines go to the ``logger`` of the subclass's module,
    as upstream's do (its tests patch them there)."""

    score_threshold: float = 0.5
    verbose: bool = False
    name: str = "image_filter"

    score_attribute, label = "score", "Image"
    expected_dim, expected_embeddings = 768, "OpenAI CLIP ViT-L/14"

    def follow_backbone(self, model_name: str, embedding_dim: int) -> None:
        """Hears the pipeline's ImageEmbeddingStage model when the pipeline is built, so a head of
        the wrong width fails before any work."""
        if embedding_dim != self.expected_dim:
            raise ValueError(f"{type(self).__name__} expects {self.expected_dim}-d embeddings "
                             f"({self.expected_embeddings} image embeddings) but the ImageEmbeddingStage "
                             f"({model_name}) gives {embedding_dim}-d ones")

    def keep(self, score: float) -> bool:
        raise NotImplementedError

    def process(self, task: ImageBatch) -> ImageBatch:
        if "model" not in self.__dict__:
            self.setup()
        task.require_embeddings(self.name)
        for batch in self.yield_next_batch(task):
            scores = np.asarray(self.model(np.stack([im.embedding for im in batch])).cpu().numpy()).reshape(-1)
            for image, score in zip(batch, scores):
                setattr(image, self.score_attribute, float(score))
        passed = [self.keep(getattr(im, self.score_attribute)) for im in task.data]
        kept = [im for im, ok in zip(task.data, passed) if ok]
        if self.verbose:
            log = getattr(sys.modules[type(self).__module__], "logger", logger)
            for im in (im for im, ok in zip(task.data, passed) if not ok):
                log.info(f"Image {im.image_id} (path: {im.image_path}) has {self.score_attribute} "
                         f"{getattr(im, self.score_attribute):.3f}, filtered out (threshold {self.score_threshold}).")
            log.info(f"{self.label} filtering: {len(kept)}/{len(task.data)} images passed, "
                     f"{len(task.data) - len(kept)} filtered out")
        return ImageBatch(data=kept, dataset_name=task.dataset_name, _metadata=task._metadata,
                          _stage_perf=task._stage_perf)


__all__ = ["BaseFilterStage"]
