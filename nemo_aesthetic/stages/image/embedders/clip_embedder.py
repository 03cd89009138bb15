"""ImageEmbeddingStage: CLIP image embeddings through the shard engine."""
from __future__ import annotations

from dataclasses import dataclass

from nemo_aesthetic.models.base import ModelInterface
from nemo_aesthetic.models.clip import DEFAULT_TIMM_MODEL, CLIPImageEmbeddings
from nemo_aesthetic.stages.base import ProcessingStage, logger
from nemo_aesthetic.tasks import ImageBatch

_MODEL_OPTIONS = ("model_name", "model_kwargs", "checkpoint_path", "num_threads", "autocast", "device")


@dataclass
class ImageEmbeddingStage(ProcessingStage):
    """Set ``embedding`` (L2-normalised float32) on every image; images that cannot be decoded
    or preprocessed are dropped with their reason (logged, and listed in the batch's ``errors``).

    ``model_dir`` holds CLIP as NeMo Curator 1.x lays it out (``openai/clip-vit-large-patch14``,
    Hugging Face format) or is the Hugging Face cache timm loads ``model_name`` from (see
    :class:`~nemo_aesthetic.models.clip.CLIPImageEmbeddings`). Beyond upstream: ``model_name``,
    ``model_kwargs``, ``checkpoint_path`` (timm), ``num_threads`` (decode), ``autocast``, ``device``.
    """

    model_dir: str = None
    num_gpus_per_worker: float = 0.25
    model_inference_batch_size: int = 32
    verbose: bool = False
    remove_image_data: bool = False
    name: str = "image_embedding"
    model_name: str = DEFAULT_TIMM_MODEL
    model_kwargs: dict | None = None
    checkpoint_path: str | None = None
    num_threads: int = 4
    autocast: bool = True
    device: str | None = None

    def __post_init__(self) -> None:
        if self.model_inference_batch_size < 1:
            raise ValueError("model_inference_batch_size must be >= 1")
        self.resources = self._gpu_resources(self.num_gpus_per_worker)

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def setup_on_node(self, node_info=None, worker_metadata=None) -> None:
        CLIPImageEmbeddings.download_weights_on_node(self.model_dir)

    def _model_options(self) -> dict:
        # Only what differs from the defaults, so a one-argument model double (as upstream's tests use) fits.
        return {k: getattr(self, k) for k in _MODEL_OPTIONS if getattr(self, k) != type(self).__dataclass_fields__[k].default}

    def backbone(self) -> tuple[str, int]:
        """``(timm model name, embedding width)``, known without loading weights."""
        embedder = CLIPImageEmbeddings(self.model_dir, **self._model_options()).embedder
        return embedder.model_name, embedder.embedding_dim

    def setup(self, worker_metadata=None) -> None:
        self.model = CLIPImageEmbeddings(self.model_dir, **self._model_options())
        self.model.setup()

    def process(self, task: ImageBatch) -> ImageBatch:
        if "model" not in self.__dict__:
            self.setup()
        kept, size = [], self.model_inference_batch_size
        if isinstance(self.model, ModelInterface):  # ours: bytes stream through the engine
            def drop(image, reason):
                logger.warning("%s: dropped image %s (%s): %s", self.name, image.image_id, image.image_path, reason)
                task.errors.append((image.image_id, reason))
            batches = ((b.tags, b.embeddings) for b in self.model.embed_images(task.data, size, drop))
        else:  # any other model: upstream's call, a list of pixel arrays per batch
            batches = ((c, self.model([im.image_data for im in c]).cpu().numpy())
                       for c in (task.data[i:i + size] for i in range(0, len(task.data), size)))
        for images, embeddings in batches:
            for image, row in zip(images, embeddings):
                image.embedding = row
                if self.remove_image_data:
                    image.image_data = None
            kept.extend(images)
            if self.verbose:
                logger.info(f"Generated embeddings for {len(images)} images.")
        task.data = kept
        return task
