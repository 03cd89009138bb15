"""AestheticScorer (NeMo Curator 1.x's ``nemo_curator.models.aesthetics``) over the core's folded
LAION aesthetic head (:class:`~nemo_aesthetic.image.classifiers.AestheticClassifier`)."""
from __future__ import annotations

from nemo_aesthetic.image.classifiers.aesthetic import AestheticClassifier, upstream_mlp
from nemo_aesthetic.models._scorer import EmbeddingScorer
from nemo_aesthetic.weights import AESTHETIC_WEIGHTS

MLP = upstream_mlp


class AestheticScorer(EmbeddingScorer):
    """``scorer(embeddings)`` -> aesthetic scores (roughly 1-10) of L2-normalised ViT-L/14 embeddings.

    Weights: ``model_dir/ttj/sac-logos-ava1-l14-linearMSE/model.safetensors`` (upstream's layout),
    else ``model_dir/sac+logos+ava1-l14-linearMSE.pth``, else ``$NEMO_AESTHETIC_HOME``'s copy.
    """

    model_id = "ttj/sac-logos-ava1-l14-linearMSE"
    upstream_files = ("model.safetensors",)
    legacy_file = AESTHETIC_WEIGHTS.filename

    def make_classifier(self, model_path):
        return AestheticClassifier(model_path=model_path, device=self.device)

    def get_weights_path(self) -> str | None:
        return self.weights_path()
