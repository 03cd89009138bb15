"""ImageNSFWFilterStage: LAION CLIP-based NSFW probability, keep ``score < score_threshold``."""
from __future__ import annotations

import numpy as np

from nemo_aesthetic.image.classifiers.nsfw import NsfwClassifier
from nemo_aesthetic.stages.image.filters.base import ScoreFilterStage
from nemo_aesthetic.weights import NSFW_WEIGHTS


class ImageNSFWFilterStage(ScoreFilterStage):
    """Set ``nsfw_score`` (probability 0-1) and keep images with ``score < score_threshold``.

    The scorer is the core :class:`~nemo_aesthetic.image.classifiers.NsfwClassifier`, loaded
    once per worker process.

    Args:
        model_dir: a directory holding ``clip_autokeras_binary_nsfw.pth``. When the file is not
            there (or model_dir is None) the legacy default applies:
            ``$NEMO_AESTHETIC_HOME/clip_autokeras_binary_nsfw.pth``, extracted from the upstream
            zip if absent; offline with no file, an error names both paths.
        score_threshold: images scoring at or above it are removed.
        model_inference_batch_size: embeddings scored per step.
        num_gpus_per_worker: GPU share per partition task on clusters whose workers advertise a
            ``GPU`` resource; ignored on CPU.
        verbose: log per-batch counts at INFO.
        device: "cuda", "cpu", ... (default: cuda if the worker has a GPU, else cpu).
    """

    name = "image_nsfw_filter"
    score_attribute = "nsfw_score"
    weights_filename = NSFW_WEIGHTS.filename

    def make_classifier(self, model_path):
        return NsfwClassifier(model_path=model_path, device=self.device)

    def keep(self, scores: np.ndarray) -> np.ndarray:
        return scores < self.score_threshold
