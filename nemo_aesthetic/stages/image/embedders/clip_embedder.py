"""ImageEmbeddingStage: CLIP image embeddings through the shard engine."""
from __future__ import annotations

from dataclasses import dataclass, fields

from nemo_aesthetic.models.clip import DEFAULT_TIMM_MODEL, CLIPImageEmbeddings, embedding_batches
from nemo_aesthetic.stages.base import logger
from nemo_aesthetic.stages.image.base import ImageModelStage
from nemo_aesthetic.tasks import ImageBatch

_MODEL_OPTIONS = ("model_name", "model_kwargs", "checkpoint_path", "num_threads", "autocast", "device", "decode")


@dataclass
class ImageEmbeddingStage(ImageModelStage):
    """Set ``embedding`` (L2-normalised float32) on every image; one that cannot be decoded is
    dropped with its reason (:meth:`ImageBatch.drop`). ``model_dir`` and the options beyond
    upstream's (``model_name`` to ``decode``): see :class:`~nemo_aesthetic.models.clip.CLIPImageEmbeddings`."""

    verbose: bool = False
    remove_image_data: bool = False
    name: str = "image_embedding"
    model_name: str = DEFAULT_TIMM_MODEL
    model_kwargs: dict | None = None
    checkpoint_path: str | None = None
    num_threads: int = 4
    autocast: bool = True
    device: str | None = None
    decode: str = "auto"

    def setup_on_node(self, node_info=None, worker_metadata=None) -> None:
        CLIPImageEmbeddings.download_weights_on_node(self.model_dir)

    def _model(self) -> CLIPImageEmbeddings:
        # Only the options set away from their defaults, so a one-argument model double (as upstream's tests use) fits.
        default = {f.name: f.default for f in fields(self)}
        return CLIPImageEmbeddings(self.model_dir, **{k: getattr(self, k) for k in _MODEL_OPTIONS
                                                      if getattr(self, k) != default[k]})

    def backbone(self) -> tuple[str, int]:
        """``(timm model name, embedding width)``, known without loading weights."""
        model = self._model()
        return model.embedder.model_name, model.embedding_dim

    def setup(self, worker_metadata=None) -> None:
        self.model = self._model()
        self.model.setup()
        self.progress = worker_metadata.extra.get("progress") if worker_metadata is not None else None

    def process(self, task: ImageBatch) -> ImageBatch:
        if "model" not in self.__dict__:
            self.setup()
        progress, size, kept = getattr(self, "progress", None), self.model_inference_batch_size, []
        drop = lambda image, reason: task.drop(image.image_id, reason, self.name, image.image_path)  # noqa: E731
        for images, embeddings in embedding_batches(self.model, task.data, size, drop, progress):
            for image, row in zip(images, embeddings):
                image.embedding = row
                if self.remove_image_data:
                    image.image_data = None
            kept.extend(images)
            if self.verbose:
                logger.info(f"Generated embeddings for {len(images)} images.")
        if progress is not None:
            progress.advance(len(task.data))
        task.data = kept
        return task
