"""TimmImageEmbedder: any timm image model, weights through timm's own loading.

``pretrained=True`` loads weights the way timm does (Hugging Face hub, honouring the HF cache,
``cache_dir`` and ``HF_HUB_OFFLINE=1``); ``checkpoint_path`` loads a local file through timm's
``load_checkpoint``. Preprocessing is timm's transform for the model's own pretrained config.
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterable

from nemo_aesthetic.engine import BatchPreprocessor, SeenKeys, default_device, read_shard
from nemo_aesthetic.image.embedders.base import ImageEmbedder
from nemo_aesthetic.image.preprocess import DEFAULT_MAX_PIXELS, cpu_transform, make_preprocessor
from nemo_aesthetic.image.tensor_preprocess import DeviceBatchPreprocessor, make_tensor_preprocessor
from nemo_aesthetic.prefetch import prefetch


class TimmImageEmbedder(ImageEmbedder):
    """Embed images with a timm model (default use: ``vit_large_patch14_clip_quickgelu_224.openai``).

    Args:
        model_name: timm model name, with its pretrained tag (``.openai``).
        pretrained: load pretrained weights through timm's hub loading.
        batch_size: images per forward pass. None (the default): 256 on CUDA, 1 on the CPU,
            chosen on the worker. (NeMo Curator 0.x defaults to 1 everywhere, which leaves a GPU
            nearly idle; pass ``batch_size=1`` for its behaviour.)
        num_threads_per_worker: decode/preprocess threads per worker (on the tensor path: the
            threads that decode what nvJPEG does not take, e.g. PNG or progressive JPEG).
        image_embedding_column: name of the output column.
        normalize_embeddings: L2-normalise (the aesthetic and NSFW heads expect it).
        classifiers: classifiers to fuse: they score each batch right after the forward pass.
        autocast: on CUDA, weights cast to bf16 once at load and the forward run under bf16
            autocast (so no weight is re-cast per batch, while layer norms and softmax stay in
            fp32); ``False`` keeps fp32. Ignored on CPU, where it would only change the scores.
        use_index_files: accepted for compatibility; tars are streamed, so index files are unused.
        checkpoint_path: a local weights file loaded through timm (instead of, or over, the hub).
        model_kwargs: extra ``timm.create_model`` arguments (``depth``, ``embed_dim``, ...).
        cache_dir: timm/Hugging Face cache directory for hub weights.
        device: "cuda", "cpu", ... (default: cuda if the worker has a GPU, else cpu).
        max_pixels: images with more pixels are refused with a per-row reason.
        decode: "pil" decodes and preprocesses with PIL + timm's transform (the reference path,
            the default on CPU); "tensor" decodes JPEGs with torchvision (nvJPEG on CUDA) and
            applies timm's transforms to tensors on the device, a batch at a time (the default
            on CUDA; other formats fall back to PIL per image); "auto" picks by device.
        compile: ``torch.compile`` the model (worth it for long GPU jobs; first batch is slow).
        pure_bf16: opt in to running the whole model in bf16 (weights and activations: layer norms,
            QuickGELU and softmax too, which ``compile=True`` then fuses) instead of bf16 autocast.
            Faster; what it costs in fidelity against fp32 is in BENCHMARKS.md ("GPU").
    """

    def __init__(self, model_name: str, pretrained: bool = False, batch_size: int | None = None,
                 num_threads_per_worker: int = 4, image_embedding_column: str = "image_embedding",
                 normalize_embeddings: bool = True, classifiers: Iterable = (), autocast: bool = True,
                 use_index_files: bool = False, checkpoint_path: str | None = None,
                 model_kwargs: dict | None = None, cache_dir: str | None = None, device: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, decode: str = "auto", compile: bool = False,
                 pure_bf16: bool = False):
        super().__init__(model_name, image_embedding_column=image_embedding_column, classifiers=classifiers,
                         batch_size=batch_size, num_threads_per_worker=num_threads_per_worker,
                         normalize_embeddings=normalize_embeddings, autocast=autocast, device=device,
                         max_pixels=max_pixels)
        self.pretrained = pretrained
        self.use_index_files = use_index_files
        self.checkpoint_path = checkpoint_path
        self.model_kwargs = dict(model_kwargs or {})
        self.cache_dir = cache_dir
        if decode not in ("auto", "pil", "tensor"):
            raise ValueError(f"decode must be 'auto', 'pil' or 'tensor', not {decode!r}")
        self.decode = decode
        self.compile = compile
        self.pure_bf16 = pure_bf16
        self._embedding_dim = self._probe_embedding_dim()

    def _probe_embedding_dim(self) -> int:
        """Build the architecture on the meta device: checks the name and finds the output width
        without allocating or downloading any weights."""
        import timm
        import torch

        try:
            with torch.device("meta"):
                model = timm.create_model(self.model_name, pretrained=False, **self.model_kwargs)
        except RuntimeError as exc:
            from nemo_aesthetic.weights import check_model_name

            check_model_name(self.model_name)  # says which names are close
            raise ValueError(f"timm does not know model {self.model_name!r}: {exc}") from exc
        return int(model.num_classes or model.num_features)

    @property
    def embedding_dim(self) -> int:
        return self._embedding_dim

    def load_embedding_model(self, device: str):
        import timm

        kwargs = dict(self.model_kwargs)
        if self.cache_dir is not None:
            kwargs["cache_dir"] = self.cache_dir
        if self.pretrained and not self.checkpoint_path:
            from nemo_aesthetic.weights import require_clip_weights_or_hub

            require_clip_weights_or_hub(self.model_name, self.cache_dir)  # at once, not after a minute of retries
        try:
            if self.checkpoint_path:
                kwargs["checkpoint_path"] = self.checkpoint_path
            model = timm.create_model(self.model_name, pretrained=self.pretrained, **kwargs)
        except (OSError, RuntimeError, ValueError) as exc:
            raise RuntimeError(self._load_failure(exc)) from exc
        import torch

        model = model.eval()
        if self._bf16_weights(device):  # cast once, before the copy (half the bytes to move);
            model = model.to(torch.bfloat16)  # autocast then finds every weight already cast
        model = model.to(device)
        if self.compile:
            model = torch.compile(model)
        return model

    def _bf16_weights(self, device: str) -> bool:
        return self.pure_bf16 or (self.autocast and str(device).startswith("cuda"))

    def decode_mode(self, device: str) -> str:
        """"tensor" (torchvision decode + transforms on the device) or "pil" (the reference path)."""
        if self.decode != "auto":
            return self.decode
        return "tensor" if device.startswith("cuda") else "pil"

    def _load_failure(self, exc: Exception) -> str:
        """Say which weights were looked for where, and how else to provide them."""
        if self.checkpoint_path:
            return f"cannot load {self.model_name!r} from checkpoint_path {self.checkpoint_path}: {exc}"
        import timm

        hub_id = (timm.models.get_pretrained_cfg(self.model_name).hf_hub_id
                  if self.pretrained and "." in self.model_name else None)
        where = self.cache_dir or "the Hugging Face cache ($HF_HOME/hub, default ~/.cache/huggingface/hub)"
        return (f"cannot load {self.model_name!r} (pretrained={self.pretrained}): {type(exc).__name__}: {exc}\n"
                f"The weights are looked up by timm on the Hugging Face hub as {hub_id or 'its default tag'}, "
                f"cached in {where}; offline (HF_HUB_OFFLINE=1) they must already be there. "
                "Or pass checkpoint_path= a local weights file (a timm state dict).")

    def load_preprocessor(self, model, device: str):
        if self.decode_mode(device) == "tensor":
            return make_tensor_preprocessor(model, device, self.max_pixels)
        return make_preprocessor(cpu_transform(model), self.max_pixels)

    def make_batch_preprocessor(self, model, preprocess, device: str) -> BatchPreprocessor:
        """On the tensor path, whole batches through nvJPEG (see :class:`DeviceBatchPreprocessor`)."""
        batcher = getattr(preprocess, "batcher", None)
        if batcher is not None:
            import torch

            dtype = torch.bfloat16 if self._bf16_weights(device) else torch.float32  # what autocast feeds the model
            return DeviceBatchPreprocessor(batcher, self.num_threads_per_worker, dtype)
        return super().make_batch_preprocessor(model, preprocess, device)

    def iter_shard_items(self, fs, tar_path: str, seen: SeenKeys):
        """The shard read by a background thread up to two batches ahead, so the tar is read
        while the model runs (the engine's judging of each sample happens on that thread too)."""
        depth = max(64, 2 * self.batch_size_on(self.device or default_device()))
        return prefetch(read_shard(fs, tar_path, seen), depth=depth, name="shard-reader")

    def model_cache_key(self, device: str) -> str:
        spec = json.dumps([self.model_name, self.pretrained, self.checkpoint_path, self.model_kwargs,
                           self.cache_dir, self.max_pixels, self.decode, self.compile, self.pure_bf16, self._bf16_weights(device),
                           device],
                          sort_keys=True, default=str)
        return "timm-embedder-" + hashlib.sha1(spec.encode()).hexdigest()
