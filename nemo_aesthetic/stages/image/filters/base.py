"""Shared body of the score filters: a core classifier's scorer on each batch's embeddings."""
from __future__ import annotations

import os

import numpy as np

from nemo_aesthetic.distributed import load_object_on_worker
from nemo_aesthetic.image.embedders.base import default_device
from nemo_aesthetic.stages.base import ProcessingStage
from nemo_aesthetic.stages.tasks import ImageBatch
from nemo_aesthetic.weights import WeightsUnavailableError


class ScoreFilterStage(ProcessingStage):
    """Score every image with ``self.classifier`` into ``score_attribute``, keep those ``keep()`` says."""

    score_attribute = "score"
    weights_filename = ""

    def __init__(self, model_dir: str | None = None, score_threshold: float = 0.5,
                 model_inference_batch_size: int = 32, num_gpus_per_worker: float = 0.25,
                 verbose: bool = False, device: str | None = None):
        if model_inference_batch_size < 1:
            raise ValueError("model_inference_batch_size must be >= 1")
        self.model_dir = None if model_dir is None else str(model_dir)
        self.score_threshold = score_threshold
        self.model_inference_batch_size = model_inference_batch_size
        self.num_gpus_per_worker = num_gpus_per_worker
        self.verbose = verbose
        self.device = device
        self.classifier = self._classifier_from_dir()

    def make_classifier(self, model_path: str | None):
        raise NotImplementedError

    def keep(self, scores: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _classifier_from_dir(self):
        """``model_dir/<weights file>`` when it is there, else the legacy front's default location."""
        candidate = os.path.join(self.model_dir, self.weights_filename) if self.model_dir else None
        if candidate is not None and os.path.exists(candidate):
            return self.make_classifier(candidate)
        try:
            return self.make_classifier(None)
        except WeightsUnavailableError as exc:
            if candidate is None:
                raise
            raise WeightsUnavailableError(
                f"{type(self).__name__}: {candidate} does not exist (model_dir={self.model_dir}), and the "
                f"default location failed too:\n{exc}") from exc

    def process(self, task: ImageBatch) -> ImageBatch:
        import torch

        if not task.data:
            return task
        missing = [im.image_id for im in task.data if im.embedding is None]
        if missing:
            raise ValueError(f"{self.name}: {len(missing)} image(s) have no embedding (e.g. {missing[:3]}); "
                             "put an ImageEmbeddingStage before this stage")
        matrix = np.stack([im.embedding for im in task.data]).astype(np.float32, copy=False)
        self.classifier.check_embedding_dim(matrix.shape[1], source="the ImageEmbeddingStage")
        device = self.device or default_device()
        scorer = load_object_on_worker(self.classifier.cache_key(device), self.classifier.load_model, device)
        scores = np.empty(len(matrix), dtype=np.float64)
        step = self.model_inference_batch_size
        with torch.inference_mode():
            for start in range(0, len(matrix), step):
                chunk = torch.from_numpy(matrix[start:start + step]).to(device)
                scores[start:start + step] = scorer(chunk).double().cpu().numpy().reshape(-1)
        for image, score in zip(task.data, scores):
            setattr(image, self.score_attribute, float(score))
        keep = self.keep(scores)
        before = len(task.data)
        task.data = [im for im, k in zip(task.data, keep) if k]
        self._log("%s: kept %d of %d images (threshold %s)", task.task_id, len(task.data), before,
                  self.score_threshold)
        return task
