"""Image bytes -> model input on the model's device, a whole batch at a time (the GPU path).

On a GPU worker a batch of JPEGs is decoded by ONE ``torchvision.io.decode_jpeg(list, device="cuda")``
call (nvJPEG's batched decoder), resized and centre-cropped on the device by timm's own transform
objects (one call per group of equally sized images), and normalised once per batch with mean/std
kept on the device. Nothing in a batch reads a value back from the device, so the host never waits
for the GPU (a forward running on another stream keeps running). On the CPU the same code decodes
with libjpeg-turbo through torchvision, which is how CI measures it against the PIL reference.

Only JPEGs whose decode is known to match PIL's go to ``decode_jpeg``: baseline 8-bit YCbCr or
grayscale, structurally whole (tables, one scan, restart markers, ending in EOI; see
:mod:`~nemo_aesthetic.image.jpeg_markers`). Everything else - PNG/WebP/GIF, CMYK or Adobe/RGB JPEGs,
progressive, arithmetic-coded, truncated, or anything ``decode_jpeg`` refuses - is decoded by the
CPU path's own PIL code (:func:`~nemo_aesthetic.image.preprocess.decode_image`) in a thread pool,
so it gets the same pixels and the same per-row reason as on the CPU path.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from nemo_aesthetic.engine import BatchPreprocessor
from nemo_aesthetic.image.jpeg_markers import JpegHeader, device_decodable, jpeg_header  # noqa: F401
from nemo_aesthetic.image.preprocess import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    cpu_transform,
    decode_image,
    resize_guard,
)

# torchvision 0.29 deprecates its decoders in favour of TorchCodec (not on the GPU image); one warning
# per call would flood the logs of a job decoding thousands of batches.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

def _timm_steps(model) -> tuple[list, object]:
    """timm's eval transform for ``model`` split into its geometric steps (applied to uint8 tensors
    as on PIL images) and its Normalize step; ValueError for anything else."""
    from timm.data.transforms import MaybeToTensor, ToNumpy
    from torchvision import transforms as T

    geometry, normalize = [], None
    for step in cpu_transform(model).transforms:
        if isinstance(step, (T.Resize, T.CenterCrop)) and normalize is None:
            geometry.append(step)
        elif isinstance(step, (MaybeToTensor, T.ToTensor)):
            continue
        elif isinstance(step, T.Normalize) and normalize is None:
            normalize = step
        elif isinstance(step, ToNumpy):
            raise ValueError("this model's transform produces numpy arrays; use the PIL path (decode='pil')")
        else:
            raise ValueError(f"tensor preprocessing does not support {type(step).__name__}; use decode='pil'")
    if normalize is None:
        raise ValueError("this model's transform does not normalise; use the PIL path (decode='pil')")
    return geometry, normalize


#: The oldest torchvision this path runs on: ``decode_jpeg`` takes a list (nvJPEG's batched decoder,
#: pytorch/vision#8496, released in 0.19); older versions raise a TypeError on the list. setup.cfg
#: pins the same (0.20, with the decoder's first round of fixes).
MIN_TORCHVISION = (0, 20)


def check_torchvision(version: str | None = None) -> None:
    """ImportError naming the fix when the installed torchvision cannot decode a batch."""
    import re

    if version is None:
        import torchvision

        version = torchvision.__version__
    parts = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    if parts < MIN_TORCHVISION:
        need = ".".join(map(str, MIN_TORCHVISION))
        raise ImportError(f"tensor preprocessing needs torchvision>={need} (batched decode_jpeg); "
                          f"torchvision {version} is installed: pip install 'torchvision>={need}', "
                          f"or decode with PIL (decode='pil')")


@dataclasses.dataclass
class PreparedBatch:
    """A preprocessed batch: ``images[j]`` is payload ``rows[j]``; ``failures`` maps the other
    payloads' positions to the :class:`ImageDecodeError` saying why."""

    images: object                # (len(rows), 3, H, W) float tensor on the device, or None
    rows: list[int]
    failures: dict[int, ImageDecodeError]

    def per_payload(self, count: int) -> list:
        """One entry per payload: a ``(3, H, W)`` view of the batch or the ImageDecodeError."""
        out: list = [None] * count
        for j, row in enumerate(self.rows):
            out[row] = self.images[j]
        for row, error in self.failures.items():
            out[row] = error
        return out


class TensorBatchPreprocessor:
    """``payloads -> PreparedBatch`` on ``device``: batched ``decode_jpeg`` + batched timm transforms.

    Holds only constants (mean/std on the device, created once), so one instance per worker
    serves every shard and thread. Each call enqueues its device work on the calling thread's
    current stream and returns without waiting for the device. The payloads that need PIL are
    decoded in ``pil_pool`` (while the device decodes the rest), or on the calling thread.
    """

    def __init__(self, model, device: str, max_pixels: int = DEFAULT_MAX_PIXELS, dtype=None,
                 batched_resize: bool | None = None):
        import torch

        from nemo_aesthetic.image.batched_resize import plan

        check_torchvision()
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.max_pixels = max_pixels
        self.dtype = dtype or torch.float32
        self.geometry, normalize = _timm_steps(model)
        # differently sized images resized in a few matrix products: on CUDA (default), where it
        # saves a resize call per image; on the CPU the dense products cost more than the resize
        use_batched = self.device.type == "cuda" if batched_resize is None else batched_resize
        self.resize_crop = plan(self.geometry) if use_batched else None
        mean = torch.as_tensor(normalize.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.as_tensor(normalize.std, dtype=torch.float32).view(1, -1, 1, 1)
        if (std == 0).any():
            raise ValueError(f"the model's normalisation has a zero std: {normalize.std}")
        # x/255 then (x - mean)/std, folded into one multiply-add, kept on the device
        self.scale = (1.0 / (255.0 * std)).to(self.device)
        self.shift = (-mean / std).to(self.device)
        self.check_resize = resize_guard(cpu_transform(model), max_pixels)

    def __call__(self, payloads: list[bytes], pil_pool: ThreadPoolExecutor | None = None,
                 dtype=None) -> PreparedBatch:
        import torch

        failures: dict[int, ImageDecodeError] = {}
        jpeg_rows, gray_rows, pil_rows = [], [], []
        for row, data in enumerate(payloads):
            header = jpeg_header(data)
            if not device_decodable(header, data):
                pil_rows.append(row)
                continue
            try:
                self._check_size(header.width, header.height)
            except ImageDecodeError as exc:
                failures[row] = exc
                continue
            (gray_rows if header.components == 1 else jpeg_rows).append(row)

        def submit(data: bytes) -> Callable[[], object]:
            if pil_pool is None:
                return lambda: self._pil_decode(data)
            return pil_pool.submit(self._pil_decode, data).result

        pending = {row: submit(payloads[row]) for row in pil_rows}
        images: dict[int, object] = {}
        with torch.inference_mode():
            for rows, gray in ((jpeg_rows, False), (gray_rows, True)):
                for row, image in zip(rows, self._decode_jpegs([payloads[r] for r in rows], gray)):
                    if image is None:  # refused by decode_jpeg: PIL decodes it or says why
                        pending[row] = submit(payloads[row])
                    else:
                        images[row] = image
            for row, wait in pending.items():
                try:
                    image = wait().to(self.device, non_blocking=True).permute(2, 0, 1)
                    self.check_resize(image.shape[-1], image.shape[-2])
                    images[row] = image
                except ImageDecodeError as exc:
                    failures[row] = exc
            batch, rows = self._transform(images, failures, dtype or self.dtype)
        return PreparedBatch(batch, rows, failures)

    def _check_size(self, width: int, height: int) -> None:
        if width * height > self.max_pixels:  # the words of decode_image, which refuses the same
            raise ImageDecodeError(f"image too large: {width}x{height} = {width * height} pixels "
                                   f"> limit {self.max_pixels}")
        self.check_resize(width, height)

    def _decode_jpegs(self, blobs: list[bytes], gray: bool) -> list:
        """uint8 ``(3, H, W)`` tensors on the device, None for each image decode_jpeg refuses."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        if not blobs:
            return []
        joined = torch.frombuffer(bytearray().join(blobs), dtype=torch.uint8)  # one host copy per batch
        raws, start = [], 0
        for blob in blobs:
            raws.append(joined[start:start + len(blob)])
            start += len(blob)
        mode = ImageReadMode.GRAY if gray else ImageReadMode.RGB
        self._order_before_device_decode()
        decoded = self._decode_or_split(raws, mode, decode_jpeg)
        # a gray JPEG becomes RGB by repeating its channel, as PIL's convert("RGB") does
        return [x.expand(3, -1, -1) if gray and x is not None else x for x in decoded]

    def _decode_or_split(self, raws: list, mode, decode_jpeg) -> list:
        """One batched call; if it fails (one refused image fails the whole call), each half is
        tried as a batch again, so k refused images cost about ``2 k log2(n)`` calls and every other
        image is still decoded in a batch; a refused image alone becomes None."""
        try:
            return list(decode_jpeg(raws, mode=mode, device=self.device))
        except RuntimeError:
            if len(raws) == 1:
                return [None]
            half = len(raws) // 2
            return (self._decode_or_split(raws[:half], mode, decode_jpeg)
                    + self._decode_or_split(raws[half:], mode, decode_jpeg))

    def _order_before_device_decode(self) -> None:
        """Let the calling stream's queued work finish before nvJPEG writes.

        torchvision's CUDA decoder allocates its outputs on the calling thread's current stream but
        writes them on nvJPEG's own stream, which waits for nothing (``decode_jpegs_cuda.cpp``). The
        caching allocator hands this stream memory freed by its earlier batches as soon as their
        kernels are *queued*, so without this wait nvJPEG could overwrite pixels the previous
        batch's resize has not read yet. Only this preparing thread's stream is waited for (the
        forward pass on the model's stream keeps running); the decoder itself synchronises its own
        stream before returning, so its outputs are complete when ``decode_jpeg`` returns.
        """
        if self.cuda:
            import torch

            torch.cuda.current_stream(self.device).synchronize()

    def _pil_decode(self, data: bytes):
        """The CPU path's decode (same pixels, same reasons) as an HWC uint8 tensor, pinned on CUDA."""
        import torch

        image = torch.from_numpy(np.array(decode_image(data, self.max_pixels), dtype=np.uint8))
        return image.pin_memory() if self.cuda else image

    def _transform(self, images: dict, failures: dict, dtype) -> tuple[object, list[int]]:
        """``(batch, rows)``: the images resized and cropped in a few batched products (on CUDA),
        or each group of equally sized images in one call of timm's transforms; then the batch
        normalised in one multiply-add."""
        import torch

        out: dict[int, object] = {}
        batched = [r for r in sorted(images) if self.resize_crop is not None
                   and self.resize_crop.fits(*images[r].shape[-2:])]
        if batched:  # all sizes at once (see batched_resize)
            out.update(zip(batched, self.resize_crop([images[r] for r in batched]).unbind(0)))
        groups: dict[tuple, list[int]] = {}
        for row in sorted(images):
            if row not in out:
                groups.setdefault(tuple(images[row].shape), []).append(row)
        for members in groups.values():
            try:
                x = torch.stack([images[r] for r in members])
                for step in self.geometry:
                    x = step(x)
                out.update(zip(members, x.unbind(0)))
            except Exception as exc:  # e.g. a size the resize cannot take: those images' reason
                for row in members:
                    failures[row] = ImageDecodeError(f"preprocessing failed: {type(exc).__name__}: {exc}")
        rows = sorted(out)
        if not rows:
            return None, rows
        batch = torch.stack([out[r] for r in rows]).to(torch.float32)
        return batch.mul_(self.scale).add_(self.shift).to(dtype), rows

def pil_pool_size(threads: int, prep_threads: int, cuda: bool) -> int:
    """Threads for what nvJPEG does not take (progressive JPEGs, 15-25 % of web images; PNG, CMYK).

    On the CPU, ``threads``. On a GPU worker the PIL share must keep pace with the GPU: decoding a
    progressive web photo takes ~8-20 ms of a core (``bench/host_side.py``), so at 3,000 images/s
    with 25 % progressive it needs ~6-15 cores, far above the default ``threads=4``. PIL releases
    the GIL while it decodes, so the pool gets this GPU's share of the cores the process may run on
    (its affinity / the GPUs visible), less the preparing threads and one for the model and the
    reader - or ``threads``, if larger. Idle threads cost nothing.
    """
    if not cuda:
        return max(1, threads)
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_gpu = cores // max(1, torch.cuda.device_count())
    return max(1, threads, per_gpu - prep_threads - 1)


class DeviceBatchPreprocessor(BatchPreprocessor):
    """The engine's decode step on the tensor path: each batch goes whole to a
    :class:`TensorBatchPreprocessor` on one of ``prep_threads`` background threads, so batch N+1 is
    decoded while batch N is resized and the model runs on batch N-1.

    On CUDA each preparing thread works on its own CUDA stream: its decode, resize and normalise
    kernels run beside the forward pass instead of queueing behind it. ``wait()`` (called on the
    model's thread) makes the model's stream wait for the batch's event on the device - the host
    does not block - and marks the batch as used by that stream so its memory is not recycled too
    early. Payloads that need PIL are decoded by :func:`pil_pool_size` threads (``threads``, or on
    CUDA this GPU's share of the cores if that is more).
    """

    def __init__(self, batcher: TensorBatchPreprocessor, threads: int = 4, dtype=None, prep_threads: int = 2):
        import threading

        super().__init__(per_image=None, threads=threads)
        self.batcher = batcher
        self.dtype = dtype
        self.prep_threads = max(1, prep_threads)
        self._prep = ThreadPoolExecutor(self.prep_threads, thread_name_prefix="device-prep")
        self.pil_threads = pil_pool_size(self.threads, self.prep_threads, batcher.cuda)
        self._pil = ThreadPoolExecutor(self.pil_threads, thread_name_prefix="pil-decode")
        self._local = threading.local()  # each preparing thread's own CUDA stream

    def start(self, payloads: list[bytes]) -> Callable[[], list]:
        import torch

        future = self._prep.submit(self._prepare, list(payloads))

        def wait() -> list:
            batch, ready = future.result()
            if ready is not None:
                consumer = torch.cuda.current_stream(self.batcher.device)
                consumer.wait_event(ready)
                if batch.images is not None:
                    batch.images.record_stream(consumer)
            return batch.per_payload(len(payloads))

        return wait

    def place(self, tensor):
        import torch

        return tensor.to(self.batcher.device, self.dtype or torch.float32)

    def _prepare(self, payloads: list[bytes]):
        import torch

        if not self.batcher.cuda:
            return self.batcher(payloads, self._pil, self.dtype), None
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(self.batcher.device)
        with torch.cuda.stream(stream):
            batch = self.batcher(payloads, self._pil, self.dtype)
            ready = torch.cuda.Event()
            ready.record(stream)
        return batch, ready

    def close(self) -> None:
        self._prep.shutdown(wait=True)
        self._pil.shutdown(wait=True)


class SingleImagePreprocessor:
    """bytes -> normalised ``(3, H, W)`` tensor on the device, one image at a time (a batch of one
    through ``batcher``, decoding on the calling thread); raises :class:`ImageDecodeError`."""

    def __init__(self, batcher: TensorBatchPreprocessor):
        self.batcher = batcher

    def __call__(self, data: bytes):
        result = self.batcher([data]).per_payload(1)[0]
        if isinstance(result, ImageDecodeError):
            raise result
        return result


def make_tensor_preprocessor(model, device: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                             dtype=None) -> SingleImagePreprocessor:
    """The per-image tensor preprocessor; its ``.batcher`` is what :class:`DeviceBatchPreprocessor`
    runs whole batches through (one set of device constants per worker)."""
    return SingleImagePreprocessor(TensorBatchPreprocessor(model, device, max_pixels, dtype))
