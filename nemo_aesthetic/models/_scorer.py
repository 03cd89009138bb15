"""What the aesthetic and NSFW scorers share: find the weights in ``model_dir``, load the core
classifier's scorer once per worker, score embeddings."""
from __future__ import annotations

import os

import numpy as np

from nemo_aesthetic.distributed import load_object_on_worker
from nemo_aesthetic.engine import default_device
from nemo_aesthetic.models.base import ModelInterface
from nemo_aesthetic.weights import WeightsUnavailableError


class EmbeddingScorer(ModelInterface):
    """``scorer(embeddings) -> scores`` (a 1-d tensor) over a core classifier.

    Weights are looked up in ``model_dir`` in NeMo Curator 1.x's layout (``<model id>/<file>``),
    then as ``model_dir/<legacy file name>``, then at the legacy front's default location
    (``$NEMO_AESTHETIC_HOME``, downloaded and verified if absent).
    """

    model_id: str = ""
    upstream_files: tuple[str, ...] = ()
    legacy_file: str = ""

    def __init__(self, model_dir: str | None = None, device: str | None = None):
        self.model_dir = None if model_dir is None else str(model_dir)
        self.device = device or default_device()
        self.classifier = None
        self._score = None

    @property
    def model_id_names(self) -> list[str]:
        return [self.model_id]

    def make_classifier(self, model_path: str | None):
        raise NotImplementedError

    def candidate_paths(self) -> list[str]:
        if not self.model_dir:
            return []
        return ([os.path.join(self.model_dir, self.model_id, f) for f in self.upstream_files]
                + [os.path.join(self.model_dir, self.legacy_file)])

    def weights_path(self) -> str | None:
        return next((p for p in self.candidate_paths() if os.path.exists(p)), None)

    def setup(self) -> None:
        path = self.weights_path()
        try:
            self.classifier = self.make_classifier(path)
        except WeightsUnavailableError as exc:
            if not self.model_dir:
                raise
            raise WeightsUnavailableError(f"{type(self).__name__}: none of {self.candidate_paths()} exists "
                                          f"(model_dir={self.model_dir}), and the default location failed too:\n{exc}"
                                          ) from exc
        self._score = load_object_on_worker(self.classifier.cache_key(self.device), self.classifier.load_model,
                                            self.device)

    @classmethod
    def download_weights_on_node(cls, model_dir: str | None, **options) -> None:
        """Make sure the weights are on this node (downloads to the default location if needed)."""
        scorer = cls(model_dir, **options)
        if scorer.weights_path() is None:
            scorer.make_classifier(None)

    def __call__(self, embeddings):
        import torch

        if self._score is None:
            self.setup()
        if isinstance(embeddings, np.ndarray):
            embeddings = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        self.classifier.check_embedding_dim(int(embeddings.shape[-1]), source="the embeddings")
        with torch.inference_mode():
            return self._score(embeddings.to(self.device)).reshape(-1).float().cpu()
