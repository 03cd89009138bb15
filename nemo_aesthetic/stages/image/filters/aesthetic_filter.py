"""ImageAestheticFilterStage: LAION aesthetic score, keep ``score >= score_threshold``."""
from __future__ import annotations

import numpy as np

from nemo_aesthetic.image.classifiers.aesthetic import AestheticClassifier
from nemo_aesthetic.stages.image.filters.base import ScoreFilterStage
from nemo_aesthetic.weights import AESTHETIC_WEIGHTS


class ImageAestheticFilterStage(ScoreFilterStage):
    """Set ``aesthetic_score`` (roughly 1-10) and keep images with ``score >= score_threshold``.

    The scorer is the core :class:`~nemo_aesthetic.image.classifiers.AestheticClassifier` (the
    upstream MLP folded into one mat-vec), loaded once per worker process.

    Args:
        model_dir: a directory holding ``sac+logos+ava1-l14-linearMSE.pth``. When the file is not
            there (or model_dir is None) the legacy default applies:
            ``$NEMO_AESTHETIC_HOME/sac+logos+ava1-l14-linearMSE.pth``, downloaded and verified
            (sha256) if absent; offline with no file, an error names both paths.
        score_threshold: images scoring below it are removed.
        model_inference_batch_size: embeddings scored per step.
        num_gpus_per_worker: GPU share per partition task on clusters whose workers advertise a
            ``GPU`` resource; ignored on CPU.
        verbose: log per-batch counts at INFO.
        device: "cuda", "cpu", ... (default: cuda if the worker has a GPU, else cpu).
    """

    name = "image_aesthetic_filter"
    score_attribute = "aesthetic_score"
    weights_filename = AESTHETIC_WEIGHTS.filename

    def make_classifier(self, model_path):
        return AestheticClassifier(model_path=model_path, device=self.device)

    def keep(self, scores: np.ndarray) -> np.ndarray:
        return scores >= self.score_threshold
