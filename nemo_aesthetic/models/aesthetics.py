"""AestheticScorer (NeMo Curator 1.x's ``nemo_curator.models.aesthetics``) over the core's folded
LAION aesthetic head (:class:`~nemo_aesthetic.image.classifiers.AestheticClassifier`)."""
from __future__ import annotations

from nemo_aesthetic.image.classifiers.aesthetic import HEADS, AestheticClassifier, resolve_head, upstream_mlp
from nemo_aesthetic.models._scorer import EmbeddingScorer
from nemo_aesthetic.weights import AESTHETIC_WEIGHTS

MLP = upstream_mlp


class AestheticScorer(EmbeddingScorer):
    """``scorer(embeddings)`` -> aesthetic scores (roughly 1-10) of L2-normalised ViT-L/14 embeddings.

    Weights: ``model_dir/ttj/sac-logos-ava1-l14-linearMSE/model.safetensors`` (upstream's layout),
    else ``model_dir/sac+logos+ava1-l14-linearMSE.pth``, else ``$NEMO_AESTHETIC_HOME``'s copy.
    Beyond upstream, ``head`` picks a LAION-Aesthetics V1 head instead (see ``AestheticClassifier``).
    """

    model_id = "ttj/sac-logos-ava1-l14-linearMSE"
    upstream_files = ("model.safetensors",)
    legacy_file = AESTHETIC_WEIGHTS.filename

    def __init__(self, model_dir: str | None = None, device: str | None = None, head: str = "v2"):
        super().__init__(model_dir, device)
        self.head = resolve_head(head)
        if self.head != "v2":
            self.upstream_files, self.legacy_file = (), HEADS[self.head][0].filename

    def make_classifier(self, model_path):
        return AestheticClassifier(model_path=model_path, device=self.device, head=self.head)

    def get_weights_path(self) -> str | None:
        return self.weights_path()
