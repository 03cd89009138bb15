"""Image bytes -> model input on the model's device: torchvision decode + timm's own transforms on tensors.

On a GPU worker, JPEGs are decoded by nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``) and
resized, cropped and normalised on the GPU, so the CPU only reads tars. The steps are timm's own
transform objects for the model (``Resize``/``CenterCrop``/``Normalize`` accept tensors); only the
PIL->tensor step is replaced by a dtype conversion, so the sizes, interpolation and statistics
can never drift from the CPU path's. Everything nvJPEG does not take (PNG, WebP, GIF, CMYK or
progressive-oddity JPEGs it refuses) is decoded by the same PIL code as the CPU path, per image.

The same code runs on the CPU (libjpeg-turbo through torchvision), which is how CI measures its
difference from the PIL reference path (see BENCHMARKS.md).
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from nemo_aesthetic.image.preprocess import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    cpu_transform,
    decode_image,
    open_image,
    resize_guard,
)

_JPEG_MAGIC = b"\xff\xd8\xff"


def tensor_transform(model) -> Callable:
    """timm's eval transform for ``model``, applicable to ``(3, H, W)`` uint8 tensors on any device."""
    import torch
    from timm.data.transforms import MaybeToTensor, ToNumpy
    from torchvision import transforms as T

    steps = []
    for step in cpu_transform(model).transforms:
        if isinstance(step, (MaybeToTensor, T.ToTensor)):
            steps.append(lambda x: x.to(torch.float32).div_(255.0))
        elif isinstance(step, (T.Resize, T.CenterCrop, T.Normalize)):
            steps.append(step)
        elif isinstance(step, ToNumpy):
            raise ValueError("this model's transform produces numpy arrays; use the PIL path (decode='pil')")
        else:
            raise ValueError(f"tensor preprocessing does not support {type(step).__name__}; use decode='pil'")

    def apply(image):
        for step in steps:
            image = step(image)
        return image

    return apply


def _jpeg_header_ok(data: bytes, max_pixels: int) -> bool:
    """A JPEG whose colour model the tensor decoder reproduces like PIL (RGB or grayscale)."""
    if not data.startswith(_JPEG_MAGIC):
        return False
    try:
        with open_image(data) as image:  # parses the header only
            w, h = image.size
            if w * h > max_pixels:
                raise ImageDecodeError(f"image too large: {w}x{h} = {w * h} pixels > limit {max_pixels}")
            return image.format == "JPEG" and image.mode in ("RGB", "L")
    except ImageDecodeError:
        raise
    except Exception:
        return False  # let the PIL path produce the reason


def make_tensor_preprocessor(model, device: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Callable[[bytes], object]:
    """bytes -> normalised ``(3, H, W)`` float tensor on ``device``.

    JPEGs go through ``torchvision.io.decode_jpeg`` on ``device``; anything it refuses, and every
    other format, through PIL (as on the CPU path) and then the same tensor transforms. Raises
    :class:`ImageDecodeError` with the per-row reason.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    transform = tensor_transform(model)
    check_resize = resize_guard(cpu_transform(model), max_pixels)
    # nvJPEG handles are per device; serialise GPU decodes across the decode threads.
    gpu_lock = threading.Lock() if str(device).startswith("cuda") else None

    def via_pil(data: bytes):
        rgb = np.asarray(decode_image(data, max_pixels))
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1).to(device, non_blocking=True)

    def preprocess(data: bytes):
        image = None
        if _jpeg_header_ok(data, max_pixels):
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            try:
                if gpu_lock is not None:
                    with gpu_lock:
                        image = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
                else:
                    image = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
            except RuntimeError:
                image = None  # e.g. a truncated JPEG: PIL gives the reason
        if image is None:
            image = via_pil(data)
        check_resize(image.shape[-1], image.shape[-2])
        try:
            with torch.inference_mode():
                return transform(image)
        except Exception as exc:
            raise ImageDecodeError(f"preprocessing failed: {type(exc).__name__}: {exc}") from None

    return preprocess
