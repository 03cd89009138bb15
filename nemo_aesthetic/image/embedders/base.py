"""Partition -> batches -> model -> columns, with fused classifiers.

For each metadata partition, on the worker that holds it:

1. stream the shard's tar (fsspec, any filesystem), one sample at a time;
2. look each sample's key up among the partition's ids; samples with no row are counted;
3. decode + preprocess images in a thread pool while the model runs on the previous batch;
4. batch, forward, L2-normalise, run the fused classifiers on the same batch;
5. write the results into the partition's rows BY KEY.

Every row comes out. A row whose image is missing, undecodable, too large, duplicated or in an
unreadable tar keeps its metadata and gets a null embedding/score and a reason in ``error``.

Each partition is paired with its shard explicitly: one delayed task per (metadata partition,
shard), assembled with ``dd.from_delayed``. The result is a single-root collection, so a user's
``metadata["keep"] = metadata.aesthetic_score >= 5`` stays partition-wise. (Zipping the metadata
with a second collection in ``dd.map_partitions`` made dask-expr unable to prove the two aligned,
and it inserted index shuffles that mix rows of different shards; ``partition_info`` numbers are
renumbered by ``.partitions[...]`` and would pair a partition with the wrong tar.)
"""
from __future__ import annotations

import collections
import logging
import posixpath
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

import dask.dataframe as dd
import fsspec
import numpy as np
from dask import delayed

from nemo_aesthetic import frames
from nemo_aesthetic.datasets.shards import KeyIndex, ShardReadError, iter_samples
from nemo_aesthetic.distributed import load_object_on_worker
from nemo_aesthetic.image.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, pick_image

logger = logging.getLogger(__name__)

#: Name of the per-row reason column (null when the row was scored).
ERROR_COLUMN = "error"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ImageEmbedder(ABC):
    """Base of the embedders: subclasses say how to load a model and its preprocessing."""

    def __init__(self, model_name: str, image_embedding_column: str = "image_embedding",
                 classifiers: Iterable = (), batch_size: int = 1, num_threads_per_worker: int = 4,
                 normalize_embeddings: bool = True, autocast: bool = True, device: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model_name = model_name
        self.image_embedding_column = image_embedding_column
        self.classifiers = list(classifiers)
        self.batch_size = batch_size
        self.num_threads_per_worker = max(1, num_threads_per_worker)
        self.normalize_embeddings = normalize_embeddings
        self.autocast = autocast
        self.device = device
        self.max_pixels = max_pixels

    # ----------------------------------------------------------- subclass API
    @property
    @abstractmethod
    def embedding_dim(self) -> int:
        """Width of the embeddings the model produces (known without loading weights)."""

    @abstractmethod
    def load_embedding_model(self, device: str):
        """The model, in eval mode on ``device``: ``(n, 3, H, W)`` float -> ``(n, d)``."""

    @abstractmethod
    def load_preprocessor(self, model, device: str) -> Callable[[bytes], object]:
        """bytes -> ``(3, H, W)`` tensor (on the host or ``device``); raises ImageDecodeError
        with a per-row reason. Called from ``num_threads_per_worker`` threads at once."""

    @abstractmethod
    def model_cache_key(self, device: str) -> str:
        """Identifies the loaded model, so each worker process loads it once."""

    # ----------------------------------------------------------- public
    def __call__(self, dataset):
        """Lazily add the embedding column, each fused classifier's column and ``error``."""
        from nemo_aesthetic.datasets.image_text_pair import ImageTextPairDataset

        for clf in self.classifiers:
            clf.check_embedding_dim(self.embedding_dim, source=f"{type(self).__name__}({self.model_name!r})")
        new_columns = {self.image_embedding_column: f"embedding:{self.embedding_dim}"}
        new_columns.update({clf.pred_column: "float32" for clf in self.classifiers})
        new_columns[ERROR_COLUMN] = "string"
        base_meta = dataset.metadata._meta.drop(columns=[c for c in new_columns if c in dataset.metadata.columns])
        meta = frames.empty_like_with(base_meta, new_columns)
        if dataset.metadata.npartitions != len(dataset.shards):
            raise ValueError(f"metadata has {dataset.metadata.npartitions} partitions for {len(dataset.shards)} "
                             "shards; partition i must stay shard i (do not repartition before embedding)")
        embed = delayed(self._embed_partition, pure=False)
        parts = [embed(part, shard, dataset.id_col, dataset.storage_options)
                 for part, shard in zip(dataset.metadata.to_delayed(), dataset.shards)]
        metadata = dd.from_delayed(parts, meta=meta, verify_meta=False)
        return ImageTextPairDataset(dataset.path, metadata, dataset.tar_files, dataset.id_col,
                                    shards=dataset.shards, storage_options=dataset.storage_options)

    # ----------------------------------------------------------- on the worker
    def _load(self, device: str):
        model = self.load_embedding_model(device)
        return model, self.load_preprocessor(model, device)

    def _embed_partition(self, df, shard, id_col: str, storage_options: dict):
        shard_name, tar_path = shard.name, shard.tar
        device = self.device or default_device()
        model, preprocess = load_object_on_worker(self.model_cache_key(device), self._load, device)
        scorers = [(clf.pred_column, load_object_on_worker(clf.cache_key(device), clf.load_model, device))
                   for clf in self.classifiers]
        host = frames.to_host(df)
        ids = frames.column_values(host[id_col])
        statuses = _img2dataset_statuses(host)
        start = time.perf_counter()
        run = _ShardRun(ids, self.embedding_dim, [name for name, _ in scorers])
        forward = _make_forward(model, scorers, device, self.normalize_embeddings, self.autocast)
        if tar_path is None:
            run.fail_unseen(f"shard {shard_name} has no tar file")
        else:
            fs, _ = fsspec.core.url_to_fs(tar_path, **storage_options)
            run.stream(fs, tar_path, preprocess, forward, self.batch_size, self.num_threads_per_worker)
        run.finish(posixpath.basename(tar_path or shard_name), statuses)
        elapsed = time.perf_counter() - start
        logger.info("shard %s: %d rows, %d scored, %d errors, %d tar samples without a row, %.1f images/s",
                    shard_name, len(ids), int(run.valid.sum()), sum(e is not None for e in run.errors),
                    run.unmatched, run.valid.sum() / elapsed if elapsed > 0 else 0.0)
        if run.unmatched:
            logger.warning("shard %s: %d tar sample(s) have no metadata row and were not scored (e.g. %s)",
                           shard_name, run.unmatched, run.unmatched_examples)

        out = df.drop(columns=[c for c in (self.image_embedding_column, ERROR_COLUMN, *run.scores)
                               if c in df.columns])
        out[self.image_embedding_column] = frames.embeddings_to_series(run.embeddings, run.valid, out.index, like=df)
        for name, values in run.scores.items():
            out[name] = frames.float_series(values, run.valid, out.index, like=df)
        out[ERROR_COLUMN] = frames.string_series(run.errors, out.index, like=df)
        return out


def _img2dataset_statuses(df) -> list | None:
    """img2dataset's per-row status and error message, to explain rows that have no image."""
    if "status" not in df.columns:
        return None
    def text(values):  # pandas gives NaN, cuDF None, for a missing string
        return [v if isinstance(v, str) else None for v in values]

    messages = text(df["error_message"].tolist()) if "error_message" in df.columns else [None] * len(df)
    return list(zip(text(df["status"].tolist()), messages))


def _make_forward(model, scorers, device: str, normalize: bool, autocast: bool):
    """batch -> (embeddings, {column: scores}) as host arrays.

    On CUDA: host batches are pinned so the copy is asynchronous, the model runs under bf16
    autocast (if asked), and a batch that runs out of GPU memory is split in halves and retried
    (logged), down to single images, instead of failing the shard.
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


class _ShardRun:
    """Results of one partition while its tar streams through: rows by position, reasons."""

    def __init__(self, ids: list, dim: int, score_names: list[str]):
        n = len(ids)
        self.index = KeyIndex(ids)
        self.embeddings = np.zeros((n, dim), dtype=np.float32)
        self.valid = np.zeros(n, dtype=bool)
        self.scores = {name: np.zeros(n, dtype=np.float32) for name in score_names}
        self.errors: list[str | None] = [None] * n
        self.samples_seen = np.zeros(n, dtype=np.int64)
        self.unmatched = 0
        self.unmatched_examples: list[str] = []
        self.tar_error: str | None = None
        for pos, key in enumerate(ids):
            if key is None or key != key:
                self.errors[pos] = "missing id (null in the id column)"

    def stream(self, fs, tar_path: str, preprocess, forward, batch_size: int, threads: int) -> None:
        pending: collections.deque = collections.deque()
        batch_pos: list[int] = []
        batch_tensors: list = []
        max_inflight = max(batch_size, 2 * threads)

        def flush():
            import torch

            embeddings, scores = forward(torch.stack(batch_tensors))
            positions = np.asarray(batch_pos)
            self.embeddings[positions] = embeddings
            self.valid[positions] = True
            for name, values in scores.items():
                self.scores[name][positions] = values.reshape(-1)
            batch_pos.clear()
            batch_tensors.clear()

        def drain(limit: int):
            while len(pending) > limit:
                pos, future = pending.popleft()
                try:
                    tensor = future.result()
                except ImageDecodeError as exc:
                    self.errors[pos] = str(exc)
                    continue
                batch_pos.append(pos)
                batch_tensors.append(tensor)
                if len(batch_tensors) == batch_size:
                    flush()

        with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
            try:
                for sample in iter_samples(fs, tar_path):
                    pos = self.index.position(sample.key)
                    if pos is None:
                        self.unmatched += 1
                        if len(self.unmatched_examples) < 5:
                            self.unmatched_examples.append(sample.key)
                        continue
                    self.samples_seen[pos] += 1
                    exts = sample.extensions()
                    if self.samples_seen[pos] > 1 or len(set(exts)) != len(exts):
                        self.samples_seen[pos] += 1  # flagged as a duplicate in finish()
                        continue
                    if sample.refused:  # a member too large or sparse: left unread in the tar
                        self.errors[pos] = sample.refused
                        continue
                    image = pick_image(sample.members)
                    if image is None:
                        self.errors[pos] = f"sample has no image member (has: {', '.join(exts)})"
                        continue
                    pending.append((pos, pool.submit(preprocess, image[1])))
                    drain(max_inflight)
            except ShardReadError as exc:
                self.tar_error = str(exc)
            drain(0)
            if batch_tensors:
                flush()

    def fail_unseen(self, reason: str) -> None:
        self.tar_error = reason

    def finish(self, tar_name: str, statuses: list | None) -> None:
        """Give every row that got no embedding its reason."""
        duplicated = self.samples_seen > 1
        self.valid &= ~duplicated
        for pos in np.flatnonzero(duplicated):
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
