"""The shard engine: tar shard -> samples by key -> safe decode -> batches -> model -> columns.

Both fronts run images through this module and nothing else, so a protection added here (a size
guard, a per-row reason, an out-of-memory retry) protects both:

* the legacy front (:class:`~nemo_aesthetic.image.embedders.base.ImageEmbedder`) joins the
  results to its metadata rows by key (:class:`ShardColumns`);
* the stage front (``nemo_aesthetic.stages``) streams the same batches between its stages.

The steps are separate public pieces so that each can be replaced on its own:

``read_shard``
    the tar's samples grouped by key, each judged by :class:`SeenKeys` (the one duplicate-key
    rule) and given its image member.
:class:`BatchPreprocessor`
    image bytes -> model inputs, one batch at a time. The default runs a per-image function
    (PIL decode with the size guards + timm's transform) in a thread pool; a subclass may decode
    a whole batch at once (e.g. nvJPEG) by overriding :meth:`BatchPreprocessor.start`.
``embed_stream``
    preprocessed batches -> ``forward`` -> :class:`EmbeddedBatch` es, with the next batches
    being preprocessed while the model runs, an optional per-batch progress callback, and every
    decode failure reported with its reason.
``make_forward``
    the model call: pinned host copies, bf16 autocast on CUDA, L2 normalisation, the fused
    classifiers, and halving a batch that runs out of GPU memory.

Memory is bounded by the batch, not the shard: a couple of preprocessing chunks and one model
batch are held at a time, and samples are read from the tar one at a time.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Hashable, Iterable, Iterator

import numpy as np

from nemo_aesthetic.datasets.shards import KeyIndex, Sample, ShardReadError, iter_samples
from nemo_aesthetic.image.preprocess import ImageDecodeError, open_image, pick_image

logger = logging.getLogger(__name__)

__all__ = ["BatchPreprocessor", "BatchProgress", "EmbeddedBatch", "SeenKeys", "ShardColumns", "ShardItem",
           "default_device", "embed_stream", "make_forward", "read_shard"]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------ reading
class SeenKeys:
    """The one duplicate-key rule.

    A sample is a *duplicate* when an earlier sample of the same shard had the same identity
    (``identify(key)``: the key itself, or the metadata row it maps to), or when it holds two
    members with the same extension: either way which image belongs to the key is ambiguous.
    A duplicate is never embedded. What happens to the first copy depends on what it already
    became: the legacy front, whose results are rows joined by key, withdraws the row's result
    (``duplicate sample for this key``); the stage front has already sent the first copy
    downstream, so it keeps that one and drops the repeats with the reason.
    """

    def __init__(self, identify: Callable[[str], Hashable | None] = lambda key: key):
        self.identify = identify
        self.count: collections.Counter = collections.Counter()

    def check(self, sample: Sample) -> tuple[Hashable | None, bool]:
        """``(identity, is_duplicate)``; identity None means the key maps to nothing."""
        ident = self.identify(sample.key)
        if ident is None:
            return None, False
        self.count[ident] += 1
        exts = sample.extensions()
        return ident, self.count[ident] > 1 or len(set(exts)) != len(exts)


@dataclasses.dataclass
class ShardItem:
    """One sample of a shard as the engine judged it.

    Attributes:
        key: the sample key in the tar.
        ident: what :class:`SeenKeys` mapped the key to (None: no such row/key).
        tar_path: the tar it came from.
        sample: every member (extension, header, bytes), as read.
        image: the picked image member ``(extension, bytes)``; None if the sample has none.
        duplicate: :class:`SeenKeys` found it ambiguous.
    """

    key: str
    ident: Hashable | None
    tar_path: str
    sample: Sample
    image: tuple[str, bytes] | None
    duplicate: bool

    @property
    def problem(self) -> str | None:
        """Why this sample cannot be embedded (None if it can be tried)."""
        if self.duplicate:
            return f"duplicate sample for this key in {posixpath.basename(self.tar_path)}: image is ambiguous"
        if self.sample.refused:  # a member too large or sparse, left unread in the tar
            return self.sample.refused
        if self.image is None:
            return f"sample has no image member (has: {', '.join(self.sample.extensions())})"
        return None

    def check(self, max_pixels: int) -> str | None:
        """Why this sample cannot be passed on as a whole image (None if it can): :attr:`problem`,
        a sample cut off by a broken tar (members after the break may be missing), or an image
        member whose header is not an image or is over ``max_pixels`` (nothing is decoded)."""
        if self.problem or not self.sample.complete:
            return self.problem or "sample cut off where the tar is damaged (members after the damage are missing)"
        try:
            open_image(self.image[1], max_pixels)
        except ImageDecodeError as exc:
            return str(exc)
        return None


def read_shard(fs, tar_path: str, seen: SeenKeys | None = None, skipped: list | None = None) -> Iterator[ShardItem]:
    """The samples of one tar, in order, each judged by ``seen`` (default: by key).

    Raises :class:`~nemo_aesthetic.datasets.shards.ShardReadError` after the samples read before
    a break in the tar.
    """
    seen = seen or SeenKeys()
    for sample in iter_samples(fs, tar_path, skipped):
        ident, duplicate = seen.check(sample)
        image = None if duplicate else pick_image(sample.members)
        yield ShardItem(sample.key, ident, tar_path, sample, image, duplicate)


# ------------------------------------------------------------------ preprocessing
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
    seconds: float       # wall time of the forward pass
    total_images: int    # images embedded so far in this stream
    total_failed: int


def embed_stream(items: Iterable[tuple[Any, bytes]], preprocessor: BatchPreprocessor, forward,
                 batch_size: int, on_error: Callable[[Any, str], None],
                 on_batch: Callable[[BatchProgress], None] | None = None,
                 chunk_size: int | None = None, prefetch: int = 1) -> Iterator[EmbeddedBatch]:
    """``(tag, image bytes)`` pairs -> :class:`EmbeddedBatch` es of ``batch_size`` images.

    Payloads are preprocessed in chunks (default ``max(batch_size, 2 * threads)``); ``prefetch``
    more chunks are started before the oldest is waited for, so decoding overlaps the model while
    about ``(prefetch + 1) * chunk_size`` preprocessed images are held at most. Images that fail go to
    ``on_error(tag, reason)`` and the model batches are made of the images that succeeded, in
    input order. ``on_batch`` hears a :class:`BatchProgress` after each forward pass.
    """
    import torch

    chunk_size = chunk_size or max(batch_size, 2 * preprocessor.threads)
    in_flight: collections.deque = collections.deque()
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
                yield run_model()

    def run_model() -> EmbeddedBatch:
        start = time.perf_counter()
        embeddings, scores = forward(torch.stack(ready))
        batch = EmbeddedBatch(list(ready_tags), embeddings, scores)
        counts["images"] += len(ready)
        if on_batch is not None:
            on_batch(BatchProgress(len(ready), counts["failed_since"], time.perf_counter() - start,
                                   counts["images"], counts["failed"]))
        counts["failed_since"] = 0
        ready_tags.clear()
        ready.clear()
        return batch

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
        yield run_model()


def make_forward(model, scorers, device: str, normalize: bool = True, autocast: bool = True):
    """``batch -> (embeddings, {column: scores})`` as host arrays.

    ``scorers`` are ``(column, embeddings -> scores)`` pairs, run on the same batch right after
    the model (fused classifiers). On CUDA: host batches are pinned so the copy is asynchronous,
    the model runs under bf16 autocast (if asked), and a batch that runs out of GPU memory is
    split in halves and retried (logged), down to single images, instead of failing the shard.
    """
    import torch

    use_autocast = autocast and device.startswith("cuda")

    def forward(batch):
        try:
            return _forward_once(batch)
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise
            half = len(batch) // 2
            logger.warning("out of GPU memory on a batch of %d; retrying as %d + %d", len(batch), half,
                           len(batch) - half)
            torch.cuda.empty_cache()
            (e1, s1), (e2, s2) = forward(batch[:half]), forward(batch[half:])
            return np.concatenate([e1, e2]), {k: np.concatenate([s1[k], s2[k]]) for k in s1}

    def _forward_once(batch):
        with torch.inference_mode():
            if batch.device.type == "cpu" and device.startswith("cuda"):
                batch = batch.pin_memory()
            x = batch.to(device, non_blocking=True)
            if use_autocast:
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    feats = model(x)
            else:
                feats = model(x)
            feats = feats.float()
            if normalize:
                feats = torch.nn.functional.normalize(feats, dim=-1)
            scores = {name: scorer(feats).float().cpu().numpy() for name, scorer in scorers}
            return feats.cpu().numpy(), scores

    return forward


# ------------------------------------------------------------------ columns
class ShardColumns:
    """Results of one shard as columns aligned to its metadata rows by key.

    Every row gets an embedding (and scores) or a reason: a missing id, a duplicate, no image
    member, a decode failure, img2dataset's own status, the tar's error, or no sample at all.
    """

    def __init__(self, ids: list, dim: int, score_names: list[str]):
        n = len(ids)
        self.index = KeyIndex(ids)
        self.seen = SeenKeys(self.index.position)
        self.embeddings = np.zeros((n, dim), dtype=np.float32)
        self.valid = np.zeros(n, dtype=bool)
        self.scores = {name: np.zeros(n, dtype=np.float32) for name in score_names}
        self.errors: list[str | None] = [None] * n
        self.duplicated = np.zeros(n, dtype=bool)
        self.unmatched = 0
        self.unmatched_examples: list[str] = []
        self.tar_error: str | None = None
        for pos, key in enumerate(ids):
            if key is None or key != key:
                self.errors[pos] = "missing id (null in the id column)"

    def payloads(self, items: Iterable[ShardItem]) -> Iterator[tuple[int, bytes]]:
        """``(row position, image bytes)`` of the items that map to a row and can be tried;
        the others are counted or given their reason. A broken tar ends the stream, its error
        kept for the rows not reached."""
        try:
            for item in items:
                if item.ident is None:
                    self.unmatched += 1
                    if len(self.unmatched_examples) < 5:
                        self.unmatched_examples.append(item.key)
                    continue
                if item.duplicate:
                    self.duplicated[item.ident] = True
                    continue
                if item.problem is not None:  # no image member, or one left unread
                    self.errors[item.ident] = item.problem
                    continue
                yield item.ident, item.image[1]
        except ShardReadError as exc:
            self.tar_error = str(exc)

    def fail(self, position: int, reason: str) -> None:
        self.errors[position] = reason

    def add(self, batch: EmbeddedBatch) -> None:
        positions = np.asarray(batch.tags)
        self.embeddings[positions] = batch.embeddings
        self.valid[positions] = True
        for name, values in batch.scores.items():
            self.scores[name][positions] = values.reshape(-1)

    def finish(self, tar_name: str, statuses: list | None) -> None:
        """Give every row that got no embedding its reason."""
        self.valid &= ~self.duplicated
        for pos in np.flatnonzero(self.duplicated):
            self.errors[pos] = f"duplicate sample for this key in {tar_name}: image is ambiguous"
        for pos in np.flatnonzero(~self.valid):
            if self.errors[pos] is not None:
                continue
            # img2dataset's own word comes first: such a row never had an image, whatever the tar's state.
            if statuses is not None and statuses[pos][0] not in (None, "success"):
                status, message = statuses[pos]
                self.errors[pos] = f"no image: img2dataset status {status}" + (f" ({message})" if message else "")
            elif self.tar_error is not None:
                self.errors[pos] = self.tar_error
            else:
                self.errors[pos] = f"no sample for this key in {tar_name}"
