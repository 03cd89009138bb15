"""Batching: image bytes -> preprocessed batches -> the model -> embeddings and scores."""
from __future__ import annotations

import collections
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from nemo_aesthetic.image.preprocess import ImageDecodeError

logger = logging.getLogger("nemo_aesthetic.engine")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class BatchPreprocessor:
    """Image bytes -> model input tensors, a batch at a time (the pluggable decode step).

    :meth:`start` begins one batch and returns a function that waits for its results: one entry
    per payload, either a ``(3, H, W)`` tensor or the :class:`ImageDecodeError` saying why not.
    The default submits each payload to ``threads`` threads running ``per_image`` (which raises
    ImageDecodeError for a bad image); a batched decoder overrides :meth:`start`.
    """

    def __init__(self, per_image: Callable[[bytes], Any], threads: int = 4):
        self.per_image = per_image
        self.threads = max(1, threads)
        self._pool: ThreadPoolExecutor | None = None

    def start(self, payloads: list[bytes]) -> Callable[[], list]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
        futures = [self._pool.submit(self._one, data) for data in payloads]
        return lambda: [f.result() for f in futures]

    def place(self, tensor):
        """Put a model input prepared elsewhere (e.g. from pixels a user set) where this
        preprocessor's own outputs are, so both can be stacked into one batch."""
        return tensor

    def _one(self, data: bytes):
        try:
            return self.per_image(data)
        except ImageDecodeError as exc:
            return exc

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------ model
@dataclasses.dataclass
class EmbeddedBatch:
    """One model batch: the tags of its images (in order), embeddings ``(n, d)`` and scores."""

    tags: list
    embeddings: np.ndarray
    scores: dict[str, np.ndarray]


@dataclasses.dataclass
class BatchProgress:
    """What a progress callback hears after each model batch."""

    images: int          # images in this batch
    failed: int          # images that failed preprocessing since the previous batch
    seconds: float       # wall time from the forward's launch to its results read back
    total_images: int    # images embedded so far in this stream
    total_failed: int


class _Ready:
    """A forward's output already on the host (a forward without ``launch``)."""

    def __init__(self, output):
        self.output = output

    def result(self):
        return self.output


def embed_stream(items: Iterable[tuple[Any, bytes]], preprocessor: BatchPreprocessor, forward,
                 batch_size: int, on_error: Callable[[Any, str], None],
                 on_batch: Callable[[BatchProgress], None] | None = None,
                 chunk_size: int | None = None, prefetch: int = 2) -> Iterator[EmbeddedBatch]:
    """``(tag, image bytes)`` pairs -> :class:`EmbeddedBatch` es of ``batch_size`` images.

    Payloads are preprocessed in chunks (default ``max(batch_size, 2 * threads)``); ``prefetch``
    more chunks are started before the oldest is waited for, so decoding overlaps the model while
    about ``(prefetch + 1) * chunk_size`` preprocessed images are held at most. Images that fail go to
    ``on_error(tag, reason)`` and the model batches are made of the images that succeeded, in
    input order. ``on_batch`` hears a :class:`BatchProgress` after each forward pass.

    A ``forward`` with a ``launch(batch)`` method (what :func:`make_forward` returns) is pipelined:
    batch N is launched before batch N-1's results are read back, so the host never waits for the
    device between two forward passes.
    """
    import torch

    chunk_size = chunk_size or max(batch_size, 2 * preprocessor.threads)
    launch = getattr(forward, "launch", None)
    in_model_depth = 1 if launch is not None else 0
    launch = launch or (lambda batch: _Ready(forward(batch)))
    in_flight: collections.deque = collections.deque()
    in_model: collections.deque = collections.deque()
    ready_tags: list = []
    ready: list = []
    counts = {"images": 0, "failed": 0, "failed_since": 0}
    chunk_tags: list = []
    chunk_payloads: list[bytes] = []

    def collect(tags, wait) -> Iterator[EmbeddedBatch]:
        for tag, result in zip(tags, wait()):
            if isinstance(result, ImageDecodeError):
                on_error(tag, str(result))
                counts["failed"] += 1
                counts["failed_since"] += 1
                continue
            ready_tags.append(tag)
            ready.append(result)
            if len(ready) == batch_size:
                yield from run_model()

    def run_model() -> Iterator[EmbeddedBatch]:
        start = time.perf_counter()
        output = launch(torch.stack(ready))
        in_model.append((list(ready_tags), len(ready), counts["failed_since"], start, output))
        counts["failed_since"] = 0
        ready_tags.clear()
        ready.clear()
        while len(in_model) > in_model_depth:
            yield finish(*in_model.popleft())

    def finish(tags, images, failed, start, output) -> EmbeddedBatch:
        embeddings, scores = output.result()
        counts["images"] += images
        if on_batch is not None:
            on_batch(BatchProgress(images, failed, time.perf_counter() - start, counts["images"], counts["failed"]))
        return EmbeddedBatch(tags, embeddings, scores)

    def submit():
        in_flight.append((list(chunk_tags), preprocessor.start(list(chunk_payloads))))
        chunk_tags.clear()
        chunk_payloads.clear()

    for tag, payload in items:
        chunk_tags.append(tag)
        chunk_payloads.append(payload)
        if len(chunk_payloads) >= chunk_size:
            submit()
            while len(in_flight) > prefetch:
                yield from collect(*in_flight.popleft())
    if chunk_payloads:
        submit()
    while in_flight:
        yield from collect(*in_flight.popleft())
    if ready:
        yield from run_model()
    while in_model:
        yield finish(*in_model.popleft())


class _Copying:
    """A forward's outputs on their way to pinned host memory; :meth:`result` waits for them."""

    def __init__(self, feats, scores: dict):
        import torch

        self.feats = feats.to("cpu", non_blocking=True)
        self.scores = {name: value.to("cpu", non_blocking=True) for name, value in scores.items()}
        self.done = torch.cuda.Event()
        self.done.record()

    def result(self):
        self.done.synchronize()
        return self.feats.numpy(), {name: value.numpy() for name, value in self.scores.items()}


def make_forward(model, scorers, device: str, normalize: bool = True, autocast: bool = True,
                 pure_bf16: bool = False):
    """``batch -> (embeddings, {column: scores})`` as host arrays.

    ``scorers`` are ``(column, embeddings -> scores)`` pairs, run on the same batch right after
    the model (fused classifiers). On CUDA: host batches are pinned so the copy is asynchronous,
    the model runs under bf16 autocast (if asked), and a batch that runs out of GPU memory is
    split in halves and retried (logged), down to single images, instead of failing the shard.
    ``pure_bf16``: the model's weights are bf16 and it runs without autocast on a bf16 input (on
    any device). ``forward.launch(batch)`` starts the same work and returns at once: its ``result()`` gives the
    host arrays (on CUDA they are copied back asynchronously, into pinned memory).
    """
    import torch

    use_autocast = autocast and device.startswith("cuda")

    def forward(batch):
        try:
            feats, scores = _on_device(batch)
            return feats.cpu().numpy(), {name: value.cpu().numpy() for name, value in scores.items()}
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise
            half = len(batch) // 2
            logger.warning("out of GPU memory on a batch of %d; retrying as %d + %d", len(batch), half,
                           len(batch) - half)
            torch.cuda.empty_cache()
            (e1, s1), (e2, s2) = forward(batch[:half]), forward(batch[half:])
            return np.concatenate([e1, e2]), {k: np.concatenate([s1[k], s2[k]]) for k in s1}

    def launch(batch):
        if not device.startswith("cuda"):
            return _Ready(forward(batch))
        try:
            return _Copying(*_on_device(batch))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return _Ready(forward(batch))  # the halving retry, synchronously

    def _on_device(batch):
        with torch.inference_mode():
            if batch.device.type == "cpu" and device.startswith("cuda"):
                batch = batch.pin_memory()
            x = batch.to(device, torch.bfloat16 if pure_bf16 else None, non_blocking=True)
            if use_autocast and not pure_bf16:
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    feats = model(x)
            else:
                feats = model(x)
            feats = feats.float()
            if normalize:
                feats = torch.nn.functional.normalize(feats, dim=-1)
            return feats, {name: scorer(feats).float() for name, scorer in scorers}

    forward.launch = launch
    return forward
