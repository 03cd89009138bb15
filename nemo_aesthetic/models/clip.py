"""CLIPImageEmbeddings (NeMo Curator 1.x's ``nemo_curator.models.clip``) on the core's timm embedder.

Where the weights come from, in order:

1. ``checkpoint_path``: a timm state dict;
2. ``model_dir/openai/clip-vit-large-patch14`` in Hugging Face format (``config.json`` +
   ``model.safetensors``), as NeMo Curator 1.x downloads it: converted on load into the timm
   ViT of the same shape (:func:`hf_clip_to_timm`), so both fronts run the same model code;
3. otherwise timm's own hub loading, with ``model_dir`` as the Hugging Face cache.

Images go through the shard engine: original bytes (or pixels) -> safe decode with the size
guards -> timm's preprocessing -> batches -> model -> L2-normalised embeddings.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import os
from typing import Iterable, Iterator

import numpy as np

from nemo_aesthetic.distributed import load_object_on_worker
from nemo_aesthetic.engine import BatchPreprocessor, EmbeddedBatch, default_device, embed_stream, make_forward
from nemo_aesthetic.image.embedders.timm import TimmImageEmbedder
from nemo_aesthetic.image.preprocess import ImageDecodeError, cpu_transform, resize_guard
from nemo_aesthetic.models.base import ModelInterface

CLIP_MODEL_ID = "openai/clip-vit-large-patch14"
DEFAULT_TIMM_MODEL = "vit_large_patch14_clip_quickgelu_224.openai"


def hf_clip_timm_spec(config: dict) -> tuple[str, dict]:
    """The timm model name and ``create_model`` kwargs of a Hugging Face CLIP config's ViT."""
    vision = config.get("vision_config", config)
    width = vision["hidden_size"]
    name = "vit_large_patch14_clip_quickgelu_224" if vision.get("hidden_act", "quick_gelu") == "quick_gelu" \
        else "vit_large_patch14_clip_224"
    return name, dict(img_size=vision.get("image_size", 224), patch_size=vision.get("patch_size", 14),
                      embed_dim=width, depth=vision["num_hidden_layers"], num_heads=vision["num_attention_heads"],
                      mlp_ratio=vision.get("intermediate_size", 4 * width) / width,
                      num_classes=config.get("projection_dim", vision.get("projection_dim", 768)))


def hf_clip_to_timm(state: dict, config: dict) -> dict:
    """A Hugging Face ``CLIPModel`` (or ``CLIPVisionModelWithProjection``) state dict -> the
    state dict of the timm ViT of :func:`hf_clip_timm_spec`: same weights, same embeddings."""
    import torch

    layers = hf_clip_timm_spec(config)[1]["depth"]
    src = {k.removeprefix("vision_model."): v for k, v in state.items() if not k.startswith("text_")}
    out = {"cls_token": src["embeddings.class_embedding"].reshape(1, 1, -1),
           "pos_embed": src["embeddings.position_embedding.weight"].unsqueeze(0),
           "patch_embed.proj.weight": src["embeddings.patch_embedding.weight"],
           "norm_pre.weight": src["pre_layrnorm.weight"], "norm_pre.bias": src["pre_layrnorm.bias"],
           "norm.weight": src["post_layernorm.weight"], "norm.bias": src["post_layernorm.bias"]}
    proj = state["visual_projection.weight"]
    out["head.weight"], out["head.bias"] = proj, torch.zeros(proj.shape[0], dtype=proj.dtype)
    for i in range(layers):
        a, b = f"encoder.layers.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[b + f"attn.qkv.{kind}"] = torch.cat([src[a + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for theirs, ours in (("self_attn.out_proj", "attn.proj"), ("layer_norm1", "norm1"),
                                 ("layer_norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                out[b + f"{ours}.{kind}"] = src[a + f"{theirs}.{kind}"]
    return out


class HFClipEmbedder(TimmImageEmbedder):
    """The core timm embedder, with its weights converted from a Hugging Face CLIP folder."""

    def __init__(self, folder: str, **kwargs):
        with open(os.path.join(folder, "config.json")) as f:
            self.hf_config = json.load(f)
        self.folder = folder
        name, model_kwargs = hf_clip_timm_spec(self.hf_config)
        super().__init__(name, pretrained=False, model_kwargs=model_kwargs, **kwargs)

    def load_embedding_model(self, device: str):
        import timm
        import torch
        from safetensors.torch import load_file

        files = sorted(f for f in os.listdir(self.folder) if f.endswith(".safetensors"))
        if not files:
            raise RuntimeError(f"no *.safetensors weights in {self.folder}")
        state = {}
        for f in files:
            state.update(load_file(os.path.join(self.folder, f)))
        converted = hf_clip_to_timm(state, self.hf_config)
        model = timm.create_model(self.model_name, pretrained=False, **self.model_kwargs)
        model.load_state_dict(converted)
        if self._bf16_weights(device):  # as TimmImageEmbedder: cast once, inputs come as bf16 too
            model = model.to(torch.bfloat16)
        return model.eval().to(device)

    def model_cache_key(self, device: str) -> str:
        return super().model_cache_key(device) + "-" + os.path.abspath(self.folder)


class ImageObjectPreprocessor(BatchPreprocessor):
    """ImageObjects -> model inputs: those with their original bytes through ``decoder`` (the
    embedder's batch decoder), those that only have pixels through ``from_pixels`` in threads,
    placed on the decoder's device and dtype so that one model batch can hold both kinds."""

    def __init__(self, decoder: BatchPreprocessor, from_pixels):
        super().__init__(lambda pixels: decoder.place(from_pixels(pixels)), decoder.threads)
        self.decoder = decoder

    def start(self, images: list):
        raw = [None if im.has_pixels else im.image_bytes for im in images]
        from_bytes = [b for b in raw if b is not None]
        pixels = [im.image_data for im, b in zip(images, raw) if b is None]
        wait_bytes = self.decoder.start(from_bytes) if from_bytes else list
        wait_pixels = super().start(pixels) if pixels else list

        def wait() -> list:
            decoded, converted = iter(wait_bytes()), iter(wait_pixels())
            return [next(decoded) if b is not None else next(converted) for b in raw]

        return wait

    def close(self) -> None:
        self.decoder.close()
        super().close()


class CLIPImageEmbeddings(ModelInterface):
    """``model(images)`` -> L2-normalised CLIP ViT-L/14 image embeddings (a ``(n, d)`` tensor).

    ``images``: a list of ``(H, W, 3)`` uint8 arrays (any sizes), an ``(N, H, W, 3)`` array, or
    :meth:`embed_images` for :class:`~nemo_aesthetic.tasks.ImageObject` s (bytes stream through
    the engine, failures come back with their reasons). Keyword arguments beyond upstream's, as
    :class:`~nemo_aesthetic.image.embedders.TimmImageEmbedder` has them: ``model_name`` and
    ``model_kwargs`` (timm), ``checkpoint_path``, ``device``, ``num_threads`` (decode threads),
    ``autocast`` (bf16 on CUDA), ``decode`` ("auto": nvJPEG batches on CUDA, PIL on the CPU).
    """

    def __init__(self, model_dir: str | None = None, model_name: str = DEFAULT_TIMM_MODEL,
                 model_kwargs: dict | None = None, checkpoint_path: str | None = None, device: str | None = None,
                 num_threads: int = 4, autocast: bool = True, decode: str = "auto"):
        self.model_dir = None if model_dir is None else str(model_dir)
        self.device = device or default_device()
        hf_folder = os.path.join(self.model_dir, CLIP_MODEL_ID) if self.model_dir else None
        options = dict(num_threads_per_worker=num_threads, autocast=autocast, device=self.device, decode=decode)
        if checkpoint_path is None and hf_folder and os.path.exists(os.path.join(hf_folder, "config.json")):
            self.embedder = HFClipEmbedder(hf_folder, **options)
        else:
            self.embedder = TimmImageEmbedder(model_name, pretrained=checkpoint_path is None,
                                              checkpoint_path=checkpoint_path, model_kwargs=model_kwargs,
                                              cache_dir=self.model_dir, **options)
        self.clip = None

    @property
    def model_id_names(self) -> list[str]:
        return [CLIP_MODEL_ID]

    @property
    def embedding_dim(self) -> int:
        return self.embedder.embedding_dim

    def setup(self) -> None:
        e = self.embedder
        try:
            self.clip, self.preprocess = load_object_on_worker(e.model_cache_key(self.device),
                                                               e.load_model_and_preprocessor, self.device)
        except Exception as exc:
            layout = os.path.join(self.model_dir, CLIP_MODEL_ID) if self.model_dir else "(no model_dir)"
            raise RuntimeError(f"cannot load CLIP model: no Hugging Face CLIP at {layout} (NeMo Curator 1.x's "
                               f"layout: config.json + *.safetensors), and timm's loading failed: {exc}") from exc
        self.transform = cpu_transform(self.clip)
        self.check_resize = resize_guard(self.transform, e.max_pixels)
        self.forward = make_forward(self.clip, [], self.device, e.normalize_embeddings, e.autocast)

    def from_pixels(self, pixels):
        """``(H, W, 3)`` uint8 -> model input, with the same resize guard as bytes get."""
        from PIL import Image

        if pixels is None:
            raise ImageDecodeError("no image data and no original bytes left to embed")
        self.check_resize(pixels.shape[1], pixels.shape[0])
        try:
            return self.transform(Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("RGB"))
        except Exception as exc:  # e.g. a shape PIL cannot take
            raise ImageDecodeError(f"preprocessing failed: {type(exc).__name__}: {exc}") from None

    def embed_images(self, images: Iterable, batch_size: int, on_error, on_batch=None) -> Iterator[EmbeddedBatch]:
        """ImageObjects -> engine batches (tags are the ImageObjects); failures to ``on_error``."""
        return self.embed_tagged(((image, image) for image in images), batch_size, on_error, on_batch)

    def embed_tagged(self, pairs: Iterable, batch_size: int, on_error, on_batch=None) -> Iterator[EmbeddedBatch]:
        """``(tag, ImageObject)`` pairs -> engine batches of the tags; failures to ``on_error(tag, reason)``.

        Original bytes are decoded by the embedder's own batch decoder, as in the legacy front
        (nvJPEG a batch at a time on a GPU worker); pixel-only images join the same batches.
        """
        if self.clip is None:
            self.setup()
        decoder = self.embedder.make_batch_preprocessor(self.clip, self.preprocess, self.device)
        with ImageObjectPreprocessor(decoder, self.from_pixels) as pre:
            yield from embed_stream(pairs, pre, self.forward, batch_size, on_error, on_batch)

    def __call__(self, images):
        import torch

        if self.clip is None:
            self.setup()
        if isinstance(images, torch.Tensor):
            images = images.permute(0, 2, 3, 1).cpu().numpy() if images.shape[1] == 3 else images.cpu().numpy()
        embeddings, _ = self.forward(torch.stack([self.from_pixels(im) for im in images]))
        return torch.from_numpy(embeddings)

    @classmethod
    def download_weights_on_node(cls, model_dir: str | None) -> None:
        """Hugging Face format weights are used where they are; otherwise timm fetches them on load."""


def embedding_batches(model, pairs: Iterable, batch_size: int, on_error, on_batch=None) -> Iterator[tuple]:
    """``(tags, embeddings)`` a model batch at a time for ``(tag, ImageObject)`` pairs. Our model
    streams the original bytes through the engine (:meth:`CLIPImageEmbeddings.embed_tagged`:
    failures go to ``on_error(tag, reason)``, progress to ``on_batch``); any other callable gets
    upstream's call, a list of pixel arrays per batch, and returns a tensor."""
    if isinstance(model, CLIPImageEmbeddings):
        for batch in model.embed_tagged(pairs, batch_size, on_error, on_batch):
            yield batch.tags, batch.embeddings
        return
    pairs = iter(pairs)
    while chunk := list(itertools.islice(pairs, batch_size)):
        yield [tag for tag, _ in chunk], model([image.image_data for _, image in chunk]).cpu().numpy()


def embed_image_batches(model, batches: Iterable, batch_size: int, on_error, on_batch=None,
                        on_embedded=None) -> Iterator:
    """The ImageBatches of ``batches`` with ``embedding`` set on their images, in order, through
    ONE stream of model batches across them (:func:`embedding_batches`), so decoding never waits
    at a batch's edge. A batch comes out once its last image is embedded or has failed: a failed
    image goes to ``on_error(batch, image, reason)`` and is left out of the batch's ``data``.
    ``on_embedded(images)`` hears each model batch's images; ``on_batch`` (a
    :class:`~nemo_aesthetic.progress.ShardProgress`) the engine's progress, continued over calls."""
    in_flight: collections.deque[_InFlight] = collections.deque()
    pulled = 0

    def pairs():
        nonlocal pulled
        for task in batches:
            in_flight.append(entry := _InFlight(task, len(task.data)))
            pulled += len(task.data)
            yield from (((entry, image), image) for image in task.data)

    def failed(tag, reason: str) -> None:
        tag[0].left -= 1
        on_error(tag[0].task, tag[1], reason)

    for tags, embeddings in embedding_batches(model, pairs(), batch_size, failed, on_batch):
        for (entry, image), row in zip(tags, embeddings):
            image.embedding = row
            entry.embedded.append(image)
            entry.left -= 1
        if on_embedded is not None:
            on_embedded([image for _, image in tags])
        while in_flight and in_flight[0].left <= 0:
            yield in_flight.popleft().done()
    if on_batch is not None:  # the engine's totals restart with the next stream: count on from here
        on_batch.advance(pulled)
    while in_flight:
        yield in_flight.popleft().done()


@dataclasses.dataclass
class _InFlight:
    """A batch whose images are in the engine: how many have not come back, those embedded."""

    task: object
    left: int
    embedded: list = dataclasses.field(default_factory=list)

    def done(self):
        self.task.data = self.embedded
        return self.task
