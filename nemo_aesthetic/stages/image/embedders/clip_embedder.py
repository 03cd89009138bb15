"""ImageEmbeddingStage: CLIP image embeddings through the core's timm embedder."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nemo_aesthetic.distributed import load_object_on_worker
from nemo_aesthetic.engine import default_device, make_forward as _make_forward
from nemo_aesthetic.image.embedders.timm import TimmImageEmbedder
from nemo_aesthetic.image.preprocess import ImageDecodeError, cpu_transform
from nemo_aesthetic.stages.base import ProcessingStage, logger
from nemo_aesthetic.stages.tasks import ImageBatch

DEFAULT_MODEL = "vit_large_patch14_clip_quickgelu_224.openai"


class ImageEmbeddingStage(ProcessingStage):
    """Add ``embedding`` (L2-normalised, float32) to every image, with a timm CLIP model.

    The model, its preprocessing and the forward pass are the core's
    :class:`~nemo_aesthetic.image.embedders.timm.TimmImageEmbedder` ones, so both fronts give
    the same embeddings; the model is loaded once per worker process (and shared with the
    legacy front in that process).

    Args:
        model_dir: the Hugging Face cache directory timm loads the pretrained weights from (and
            downloads them into, when online): ``timm.create_model(model_name, pretrained=True,
            cache_dir=model_dir)``. Offline (``HF_HUB_OFFLINE=1``) it must already hold
            ``models--timm--vit_large_patch14_clip_224.openai``. None: the default HF cache.
        model_inference_batch_size: images per forward pass.
        num_gpus_per_worker: GPU share per partition task on clusters whose workers advertise a
            ``GPU`` resource; ignored on CPU. The model runs on CUDA when the worker has a GPU.
        verbose: log per-batch counts at INFO.
        remove_image_data: drop the decoded pixels (``image_data = None``) once embedded.
        model_name: timm model name with its pretrained tag.
        model_kwargs: extra ``timm.create_model`` arguments.
        checkpoint_path: a local weights file for timm instead of the hub (then ``model_dir``
            is not used).
        num_threads: preprocessing threads.
        autocast: bf16 autocast on CUDA (ignored on CPU).
        device: "cuda", "cpu", ... (default: cuda if the worker has a GPU, else cpu).
    """

    name = "image_embedding"

    def __init__(self, model_dir: str | None = None, model_inference_batch_size: int = 32,
                 num_gpus_per_worker: float = 0.25, verbose: bool = False, remove_image_data: bool = False,
                 model_name: str = DEFAULT_MODEL, model_kwargs: dict | None = None,
                 checkpoint_path: str | None = None, num_threads: int = 4, autocast: bool = True,
                 device: str | None = None):
        if model_inference_batch_size < 1:
            raise ValueError("model_inference_batch_size must be >= 1")
        self.model_dir = None if model_dir is None else str(model_dir)
        self.model_inference_batch_size = model_inference_batch_size
        self.num_gpus_per_worker = num_gpus_per_worker
        self.verbose = verbose
        self.remove_image_data = remove_image_data
        self.checkpoint_path = None if checkpoint_path is None else str(checkpoint_path)
        self.num_threads = max(1, num_threads)
        self.device = device
        self.embedder = TimmImageEmbedder(
            model_name, pretrained=self.checkpoint_path is None, batch_size=model_inference_batch_size,
            num_threads_per_worker=self.num_threads, checkpoint_path=self.checkpoint_path,
            model_kwargs=model_kwargs, cache_dir=self.model_dir, autocast=autocast, device=device)

    @property
    def embedding_dim(self) -> int:
        return self.embedder.embedding_dim

    def _model(self, device: str):
        try:
            return load_object_on_worker(self.embedder.model_cache_key(device), self.embedder.load_model_and_preprocessor, device)
        except Exception as exc:
            if self.checkpoint_path is not None:
                where = f"checkpoint_path {self.checkpoint_path}"
            else:
                where = (f"the Hugging Face cache {self.model_dir or '(default HF cache)'} "
                         f"(hub id {_hf_hub_id(self.embedder.model_name)}; offline runs need it pre-downloaded)")
            raise RuntimeError(f"{self.name}: cannot load CLIP model {self.embedder.model_name!r} from {where}: "
                               f"{type(exc).__name__}: {exc}") from exc

    def process(self, task: ImageBatch) -> ImageBatch:
        import torch

        device = self.device or default_device()
        model, from_bytes = self._model(device)
        transform = cpu_transform(model)
        forward = _make_forward(model, [], device, self.embedder.normalize_embeddings, self.embedder.autocast)

        def prepare(image):
            if image.image_data is not None:
                from PIL import Image

                try:
                    return transform(Image.fromarray(image.image_data, "RGB"))
                except Exception as exc:  # e.g. a 1x1 image a resize cannot handle
                    raise ImageDecodeError(f"preprocessing failed: {type(exc).__name__}: {exc}") from None
            data = image.image_bytes
            if data is None:
                raise ImageDecodeError("no image data and no original bytes left to embed")
            return from_bytes(data)

        kept = []
        step = self.model_inference_batch_size
        with ThreadPoolExecutor(min(self.num_threads, max(1, len(task.data))), thread_name_prefix="preprocess") as pool:
            for start in range(0, len(task.data), step):
                chunk = task.data[start:start + step]
                tensors, ok = [], []
                for image, future in zip(chunk, [pool.submit(prepare, im) for im in chunk]):
                    try:
                        tensors.append(future.result())
                        ok.append(image)
                    except ImageDecodeError as exc:
                        logger.warning("%s: dropped image %s (%s): %s", self.name, image.image_id,
                                       image.image_path, exc)
                        task.errors.append((image.image_id, str(exc)))
                if not ok:
                    continue
                embeddings, _ = forward(torch.stack(tensors))
                for image, row in zip(ok, embeddings):
                    image.embedding = np.ascontiguousarray(row, dtype=np.float32)
                    if self.remove_image_data:
                        image.image_data = None
                kept.extend(ok)
        self._log("%s: %d of %d images embedded", task.task_id, len(kept), len(task.data))
        task.data = kept
        return task


def _hf_hub_id(model_name: str) -> str:
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(model_name)
        return getattr(cfg, "hf_hub_id", None) or "?"
    except Exception:
        return "?"
