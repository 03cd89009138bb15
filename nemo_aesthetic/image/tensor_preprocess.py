"""Image bytes -> model input on the model's device, a whole batch at a time (the GPU path).

On a GPU worker a batch of JPEGs is decoded by ONE ``torchvision.io.decode_jpeg(list, device="cuda")``
call (nvJPEG's batched decoder), resized and centre-cropped on the device by timm's own transform
objects (one call per group of equally sized images), and normalised once per batch with mean/std
kept on the device. Nothing in a batch reads a value back from the device, so the host never waits
for the GPU (a forward running on another stream keeps running). On the CPU the same code decodes
with libjpeg-turbo through torchvision, which is how CI measures it against the PIL reference.

Only JPEGs whose decode is known to match PIL's go to ``decode_jpeg``: baseline 8-bit YCbCr or
grayscale, complete (ending in EOI). Everything else - PNG/WebP/GIF, CMYK or Adobe/RGB JPEGs,
progressive, arithmetic-coded, truncated, or anything ``decode_jpeg`` refuses - is decoded by the
CPU path's own PIL code (:func:`~nemo_aesthetic.image.preprocess.decode_image`) in a thread pool,
so it gets the same pixels and the same per-row reason as on the CPU path.
"""
from __future__ import annotations

import dataclasses
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from nemo_aesthetic.engine import BatchPreprocessor
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

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4 DHT, C8 JPG, CC DAC are not frames
_BASELINE = 0xC0


@dataclasses.dataclass(frozen=True)
class JpegHeader:
    """What a JPEG's markers say before its first scan (parsed without decoding anything)."""

    width: int
    height: int
    components: int
    frame: int                 # SOF marker: 0xC0 baseline, 0xC2 progressive, ...
    precision: int             # bits per sample
    component_ids: tuple
    adobe_transform: int | None  # an Adobe APP14 segment's colour transform (0: none/RGB, 1: YCbCr, 2: YCCK)
    jfif: bool


def jpeg_header(data: bytes) -> JpegHeader | None:
    """Parse the markers of ``data`` up to its frame header; None if it is not a well-formed JPEG
    start. A few microseconds per image, where PIL's ``Image.open`` takes ~60 (issue 14)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, end, adobe, jfif = 2, len(data), None, False
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        length = struct.unpack_from(">H", data, pos + 2)[0]
        body = pos + 4
        if length < 2 or body + length - 2 > end:
            return None
        if marker == 0xE0 and data.startswith(b"JFIF\0", body):
            jfif = True
        elif marker == 0xEE and data.startswith(b"Adobe", body) and length >= 14:
            adobe = data[body + 11]
        elif marker in _SOF_MARKERS:
            if length < 8:
                return None
            precision, height, width, count = struct.unpack_from(">BHHB", data, body)
            ids = tuple(data[body + 6 + 3 * i] for i in range(count) if body + 6 + 3 * i < end)
            return JpegHeader(width, height, count, marker, precision, ids, adobe, jfif)
        elif marker == 0xDA:  # a scan before any frame header
            return None
        pos = body + length - 2
    return None


def device_decodable(header: JpegHeader | None, data: bytes) -> bool:
    """True when ``decode_jpeg`` gives the pixels PIL gives: a complete baseline 8-bit JPEG, grayscale
    or YCbCr. (libjpeg reads 3 channels as RGB when an Adobe marker says "no transform" or, with no
    JFIF marker, the component ids are 'R','G','B'; those go to PIL.)"""
    if header is None or header.frame != _BASELINE or header.precision != 8 or header.width * header.height == 0:
        return False
    if header.components == 3:
        if header.adobe_transform not in (None, 1) or (not header.jfif and header.component_ids == (82, 71, 66)):
            return False
    elif header.components != 1:
        return False  # CMYK/YCCK
    return data.rfind(b"\xff\xd9", max(0, len(data) - 64)) >= 0  # truncated files go to PIL for its reason


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

    def __init__(self, model, device: str, max_pixels: int = DEFAULT_MAX_PIXELS, dtype=None):
        import torch

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.max_pixels = max_pixels
        self.dtype = dtype or torch.float32
        self.geometry, normalize = _timm_steps(model)
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
        try:
            decoded = decode_jpeg(raws, mode=mode, device=self.device)
        except RuntimeError:  # one bad image fails the batched call: find it image by image
            decoded = []
            for raw in raws:
                try:
                    decoded.append(decode_jpeg(raw, mode=mode, device=self.device))
                except RuntimeError:
                    decoded.append(None)
        # a gray JPEG becomes RGB by repeating its channel, as PIL's convert("RGB") does
        return [x.expand(3, -1, -1) if gray and x is not None else x for x in decoded]

    def _pil_decode(self, data: bytes):
        """The CPU path's decode (same pixels, same reasons) as an HWC uint8 tensor, pinned on CUDA."""
        import torch

        image = torch.from_numpy(np.array(decode_image(data, self.max_pixels), dtype=np.uint8))
        return image.pin_memory() if self.cuda else image

    def _transform(self, images: dict, failures: dict, dtype) -> tuple[object, list[int]]:
        """``(batch, rows)``: each group of equally sized images resized and cropped in one call,
        then the batch normalised in one multiply-add."""
        import torch

        groups: dict[tuple, list[int]] = {}
        for row in sorted(images):
            groups.setdefault(tuple(images[row].shape), []).append(row)
        out: dict[int, object] = {}
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

class DeviceBatchPreprocessor(BatchPreprocessor):
    """The engine's decode step on the tensor path: each batch goes whole to a
    :class:`TensorBatchPreprocessor` on one background thread, so batch N+1 is decoded while the
    model runs on batch N.

    On CUDA that thread works on its own CUDA stream: its decode, resize and normalise kernels run
    beside the forward pass instead of queueing behind it. ``wait()`` (called on the model's thread)
    makes the model's stream wait for the batch's event on the device - the host does not block -
    and marks the batch as used by that stream so its memory is not recycled too early. Payloads
    that need PIL are decoded by ``threads`` threads.
    """

    def __init__(self, batcher: TensorBatchPreprocessor, threads: int = 4, dtype=None):
        import torch

        super().__init__(per_image=None, threads=threads)
        self.batcher = batcher
        self.dtype = dtype
        self._prep = ThreadPoolExecutor(1, thread_name_prefix="device-prep")
        self._pil = ThreadPoolExecutor(self.threads, thread_name_prefix="pil-decode")
        self._stream = torch.cuda.Stream(batcher.device) if batcher.cuda else None

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

        if self._stream is None:
            return self.batcher(payloads, self._pil, self.dtype), None
        with torch.cuda.stream(self._stream):
            batch = self.batcher(payloads, self._pil, self.dtype)
            ready = torch.cuda.Event()
            ready.record(self._stream)
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
