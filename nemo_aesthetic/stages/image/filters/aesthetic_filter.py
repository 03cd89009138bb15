"""ImageAestheticFilterStage: LAION aesthetic score, keep ``score >= score_threshold``."""
from __future__ import annotations

import numpy as np

from nemo_aesthetic.image.classifiers.aesthetic import HEADS, AestheticClassifier, resolve_head
from nemo_aesthetic.stages.image.filters.base import ScoreFilterStage


class ImageAestheticFilterStage(ScoreFilterStage):
    """Set ``aesthetic_score`` (roughly 1-10) and keep images with ``score >= score_threshold``.

    The scorer is the core :class:`~nemo_aesthetic.image.classifiers.AestheticClassifier` (the
    upstream head folded into one mat-vec), loaded once per worker process.

    Args:
        model_dir: a directory holding the head's weights file (``sac+logos+ava1-l14-linearMSE.pth``
            for v2). When the file is not there (or model_dir is None) the legacy default applies:
            ``$NEMO_AESTHETIC_HOME/<file>``, downloaded and verified (sha256) if absent; offline
            with no file, an error names both paths.
        score_threshold: images scoring below it are removed.
        model_inference_batch_size: embeddings scored per step.
        num_gpus_per_worker: GPU share per partition task on clusters whose workers advertise a
            ``GPU`` resource; ignored on CPU.
        verbose: log per-batch counts at INFO.
        device: "cuda", "cpu", ... (default: cuda if the worker has a GPU, else cpu).
        head: "v2" (default), or LAION-Aesthetics V1: "v1" takes the head of the pipeline's
            ImageEmbeddingStage backbone (ViT-L/14, B/16 or B/32), "v1-l14", "v1-b16", "v1-b32".
    """

    name = "image_aesthetic_filter"
    score_attribute = "aesthetic_score"

    def __init__(self, *args, head: str = "v2", **kwargs):
        self.head = head
        self.concrete_head = resolve_head(head)
        super().__init__(*args, **kwargs)

    @property
    def weights_filename(self) -> str:
        return HEADS[self.concrete_head][0].filename

    def make_classifier(self, model_path):
        return AestheticClassifier(model_path=model_path, device=self.device, head=self.concrete_head)

    def follow_backbone(self, model_name: str) -> None:
        """Called by the Pipeline with the model of the ImageEmbeddingStage before this stage."""
        concrete = resolve_head(self.head, model_name)
        if concrete != self.concrete_head:
            self.concrete_head = concrete
            self.classifier = self._classifier_from_dir()

    def keep(self, scores: np.ndarray) -> np.ndarray:
        return scores >= self.score_threshold
