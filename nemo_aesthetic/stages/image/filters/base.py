"""BaseFilterStage: score each batch's embeddings with a model, keep what ``keep`` says."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nemo_aesthetic.stages.base import ProcessingStage, logger
from nemo_aesthetic.tasks import ImageBatch


@dataclass
class BaseFilterStage(ProcessingStage):
    """Sets ``score_attribute`` on every image from ``self.model(embeddings)`` (batches of
    ``model_inference_batch_size``) and returns a new ImageBatch of the images ``keep`` accepts.
    Subclasses say which model (``setup``), which attribute, and the rule."""

    model_dir: str = None
    num_gpus_per_worker: float = 0.25
    model_inference_batch_size: int = 32
    score_threshold: float = 0.5
    verbose: bool = False
    name: str = "image_filter"

    score_attribute = "score"
    label = "Image"
    expected_dim, expected_embeddings = 768, "OpenAI CLIP ViT-L/14"

    def follow_backbone(self, model_name: str, embedding_dim: int) -> None:
        """Called when the pipeline starts with the model of the ImageEmbeddingStage before this
        one, so a head of the wrong width fails before any work."""
        if embedding_dim != self.expected_dim:
            raise ValueError(f"{type(self).__name__} expects {self.expected_dim}-d embeddings ({self.expected_embeddings} "
                             f"image embeddings) but the ImageEmbeddingStage ({model_name}) gives {embedding_dim}-d ones")

    def report(self, message: str) -> None:
        """Verbose logging (subclasses log through their own module's logger, as upstream does)."""
        logger.info(message)

    def __post_init__(self) -> None:
        if self.model_inference_batch_size < 1:
            raise ValueError("model_inference_batch_size must be >= 1")
        self.resources = self._gpu_resources(self.num_gpus_per_worker)

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def keep(self, score: float) -> bool:
        raise NotImplementedError

    def yield_next_batch(self, task: ImageBatch):
        for i in range(0, len(task.data), self.model_inference_batch_size):
            yield task.data[i:i + self.model_inference_batch_size]

    def process(self, task: ImageBatch) -> ImageBatch:
        if "model" not in self.__dict__:
            self.setup()
        missing = [im.image_id for im in task.data if im.embedding is None]
        if missing:
            raise TypeError(f"{self.name}: {len(missing)} image(s) have no embedding (e.g. {missing[:3]}); "
                            "put an ImageEmbeddingStage before this stage")
        for batch in self.yield_next_batch(task):
            scores = np.asarray(self.model(np.stack([im.embedding for im in batch])).cpu().numpy()).reshape(-1)
            for image, score in zip(batch, scores):
                setattr(image, self.score_attribute, float(score))
        kept = [im for im in task.data if self.keep(getattr(im, self.score_attribute))]
        if self.verbose:
            for im in task.data:
                if im not in kept:
                    self.report(f"Image {im.image_id} (path: {im.image_path}) has {self.score_attribute} "
                                f"{getattr(im, self.score_attribute):.3f}, filtered out (threshold {self.score_threshold}).")
            self.report(f"{self.label} filtering: {len(kept)}/{len(task.data)} images passed, "
                        f"{len(task.data) - len(kept)} filtered out")
        return ImageBatch(data=kept, dataset_name=task.dataset_name, _metadata=task._metadata,
                          _stage_perf=task._stage_perf)


__all__ = ["BaseFilterStage"]
