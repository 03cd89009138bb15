"""NSFWScorer (NeMo Curator 1.x's ``nemo_curator.models.nsfw``) over the core's LAION CLIP-based
NSFW detector (:class:`~nemo_aesthetic.image.classifiers.NsfwClassifier`)."""
from __future__ import annotations

from nemo_aesthetic.image.classifiers.nsfw import NsfwClassifier, nsfw_model
from nemo_aesthetic.models._scorer import EmbeddingScorer
from nemo_aesthetic.weights import NSFW_WEIGHTS

NSFWModel = nsfw_model


class NSFWScorer(EmbeddingScorer):
    """``scorer(embeddings)`` -> NSFW probabilities (0-1) of L2-normalised ViT-L/14 embeddings.

    Weights: ``model_dir/laion/clip-autokeras-binary-nsfw/clip_autokeras_binary_nsfw.pth``
    (upstream's layout), else ``model_dir/clip_autokeras_binary_nsfw.pth``, else
    ``$NEMO_AESTHETIC_HOME``'s copy.
    """

    model_id = "laion/clip-autokeras-binary-nsfw"
    upstream_files = (NSFW_WEIGHTS.filename,)
    legacy_file = NSFW_WEIGHTS.filename

    def make_classifier(self, model_path):
        return NsfwClassifier(model_path=model_path, device=self.device)
