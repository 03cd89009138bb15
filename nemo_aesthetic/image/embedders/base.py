"""The legacy front: partition -> the shard engine -> columns, with fused classifiers.

For each metadata partition, on the worker that holds it, :mod:`nemo_aesthetic.engine`:

1. streams the shard's tar (fsspec, any filesystem), one sample at a time;
2. looks each sample's key up among the partition's ids; samples with no row are counted;
3. decodes + preprocesses images in a thread pool while the model runs on the previous batch;
4. batches, forwards, L2-normalises, runs the fused classifiers on the same batch;
5. writes the results into the partition's rows BY KEY (:class:`~nemo_aesthetic.engine.ShardColumns`).

Subclasses plug into the engine through :meth:`ImageEmbedder.iter_shard_items` (where samples
come from), :meth:`ImageEmbedder.make_batch_preprocessor` (how a batch is decoded) and
``_embed_partition``'s ``on_batch`` (progress after each model batch; every shard also publishes
its per-image progress as data, see :mod:`nemo_aesthetic.progress`).

Every row comes out. A row whose image is missing, undecodable, too large, duplicated or in an
unreadable tar keeps its metadata and gets a null embedding/score and a reason in ``error``.

Each partition is paired with its shard by :func:`~nemo_aesthetic.engine.partitions.map_shards`:
one task per shard, carrying that shard only, so the driver's work is linear in shards; the
result has one root, so a user's ``metadata["keep"] = metadata.aesthetic_score >= 5`` stays
partition-wise, and ``.partitions[...]`` of it still pairs each partition with its own tar.
(Zipping the metadata with a second collection in ``dd.map_partitions`` made dask-expr unable to
prove the two aligned, and it inserted index shuffles that mix rows of different shards;
``partition_info`` numbers are renumbered by ``.partitions[...]``; ``to_delayed`` ->
``from_delayed`` culled the whole graph once per shard.)
"""
from __future__ import annotations

import logging
import posixpath
import time
from abc import ABC, abstractmethod
from typing import Callable, Iterable

import fsspec
import numpy as np

from nemo_aesthetic import frames
from nemo_aesthetic.distributed import FreedMemoryReleaser, load_object_on_worker
from nemo_aesthetic.engine import (BatchPreprocessor, SeenKeys, ShardColumns, default_device, embed_stream,
                                   make_forward, read_shard)
from nemo_aesthetic.engine.partitions import map_shards
from nemo_aesthetic.engine.sources import read_items
from nemo_aesthetic.image.preprocess import DEFAULT_MAX_PIXELS
from nemo_aesthetic.progress import ShardProgress

logger = logging.getLogger(__name__)

#: Name of the per-row reason column (null when the row was scored).
ERROR_COLUMN = "error"

#: Images per forward pass when ``batch_size=None``: a batch that fills an H100/H200 with ViT-L/14
#: on CUDA (the issue-14 bench measures batch 256 and 512); one image on the CPU, NeMo Curator's
#: own default for ``TimmImageEmbedder(batch_size=1)``.
DEFAULT_BATCH_SIZES = {"cuda": 256, "cpu": 1}


class ImageEmbedder(ABC):
    """Base of the embedders: subclasses say how to load a model and how images are read.

    The first three arguments are NeMo Curator 0.x's. As there, the base itself neither
    normalises nor autocasts a subclass's model output (``TimmImageEmbedder`` turns both on).
    """

    def __init__(self, model_name: str, image_embedding_column: str = "image_embedding",
                 classifiers: Iterable = (), batch_size: int | None = 1, num_threads_per_worker: int = 4,
                 normalize_embeddings: bool = False, autocast: bool = False, device: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be >= 1 (or None: the device's default)")
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
    # NeMo Curator 0.x's subclasses implement ``load_embedding_model`` and ``load_dataset_shard``
    # only; the engine's own hooks below have defaults for them.
    @property
    def embedding_dim(self) -> int | None:
        """Width of the embeddings (known without loading weights); None: known once the model ran."""
        return None

    @abstractmethod
    def load_embedding_model(self, device: str):
        """The model, in eval mode on ``device``: ``(n, 3, H, W)`` float -> ``(n, d)``."""

    def load_dataset_shard(self, tar_path: str) -> Iterable:
        """NeMo Curator's hook: ``(images, [metadata dict per image])`` batches of one tar.

        Override it to read shards your own way: each batch goes to the model, and each image is
        matched to its metadata row by ``metadata[i][id_col]`` (rows never yielded keep their
        metadata with a reason). The default reads the tar through the engine, with this
        embedder's preprocessing and ``batch_size``; when it is not overridden the engine is
        used directly, which also keeps a reason for each image that fails to decode.
        """
        from nemo_aesthetic.image.embedders.shard_batches import engine_batches

        return engine_batches(self, tar_path)

    def load_preprocessor(self, model, device: str) -> Callable[[bytes], object]:
        """bytes -> ``(3, H, W)`` tensor (on the host or ``device``); raises ImageDecodeError
        with a per-row reason. Called from ``num_threads_per_worker`` threads at once."""
        raise NotImplementedError(f"{type(self).__name__} implements neither load_preprocessor "
                                  "nor load_dataset_shard: one of them must say how images are read")

    def model_cache_key(self, device: str) -> str:
        """Identifies the loaded model, so each worker process loads it once."""
        return f"embedder-{type(self).__module__}.{type(self).__qualname__}-{self.model_name}-{device}"

    def _reads_its_own_shards(self) -> bool:
        return type(self).load_dataset_shard is not ImageEmbedder.load_dataset_shard

    # ----------------------------------------------------------- public
    def __call__(self, dataset):
        """Lazily add the embedding column, each fused classifier's column and ``error``."""
        from nemo_aesthetic.datasets.image_text_pair import ImageTextPairDataset

        for clf in self.classifiers:
            clf.follow_backbone(self.model_name)
            if self.embedding_dim is not None:
                clf.check_embedding_dim(self.embedding_dim, source=f"{type(self).__name__}({self.model_name!r})")
        new_columns = {self.image_embedding_column: f"embedding:{self.embedding_dim or '?'}"}
        new_columns[ERROR_COLUMN] = "string"
        drop = [c for c in (*new_columns, *(clf.pred_column for clf in self.classifiers))
                if c in dataset.metadata.columns]
        meta = frames.empty_like_with(dataset.metadata._meta.drop(columns=drop), new_columns)
        for clf in self.classifiers:
            meta[clf.pred_column] = clf.predictions_column(np.zeros(0, np.float32), np.zeros(0, bool), meta.index,
                                                           like=meta)
        meta = meta[[c for c in meta.columns if c != ERROR_COLUMN] + [ERROR_COLUMN]]
        if dataset.metadata.npartitions != len(dataset.shards):
            raise ValueError(f"metadata has {dataset.metadata.npartitions} partitions for {len(dataset.shards)} "
                             "shards; partition i must stay shard i (do not repartition before embedding)")
        metadata = map_shards(self._embed_partition, dataset.metadata, dataset.shards, dataset.id_col,
                              dataset.storage_options, meta=meta, label="embed-shard", costly=True)
        return ImageTextPairDataset(dataset.path, metadata, dataset.tar_files, dataset.id_col,
                                    shards=dataset.shards, storage_options=dataset.storage_options)

    # ----------------------------------------------------------- on the worker
    def batch_size_on(self, device: str) -> int:
        """Images per forward pass on ``device``: ``batch_size``, or when None the device's
        default (:data:`DEFAULT_BATCH_SIZES`), resolved on the worker that has the device."""
        if self.batch_size is not None:
            return self.batch_size
        return DEFAULT_BATCH_SIZES["cuda" if str(device).startswith("cuda") else "cpu"]

    def load_model_and_preprocessor(self, device: str):
        """``(model, per-image preprocess)``: what one worker caches for this embedder."""
        model = self.load_embedding_model(device)
        return model, self.load_preprocessor(model, device)

    def make_batch_preprocessor(self, model, preprocess, device: str) -> BatchPreprocessor:
        """The engine's decode step for this embedder (override to decode whole batches)."""
        return BatchPreprocessor(preprocess, self.num_threads_per_worker)

    def iter_shard_items(self, fs, tar_path: str, seen: SeenKeys):
        """The shard's samples as the engine reads them (the hook a shard loader overrides)."""
        return read_shard(fs, tar_path, seen)

    def _embed_partition(self, df, shard, id_col: str, storage_options: dict, on_batch=None):
        shard_name, tar_path = shard.name, shard.tar
        host = frames.to_host(df)
        ids = frames.column_values(host[id_col])
        statuses = _img2dataset_statuses(host)
        start = time.perf_counter()
        shard_progress = ShardProgress(shard_name, len(ids))  # per-image progress, as Dask events

        def batch_done(batch):
            shard_progress(batch)
            if on_batch is not None:
                on_batch(batch)

        if self._reads_its_own_shards():
            from nemo_aesthetic.image.embedders.shard_batches import embed_user_batches

            run, tar_name = embed_user_batches(self, ids, tar_path, id_col, self.classifiers)
            run.finish(tar_name or shard_name, statuses)
        else:
            run = self._run_engine(ids, shard_name, tar_path, storage_options, batch_done,
                                   getattr(shard, "source", None))
            run.finish(posixpath.basename(tar_path or shard_name), statuses)
        elapsed = time.perf_counter() - start
        logger.info("shard %s: %d rows, %d scored, %d errors, %d tar samples without a row, %.1f images/s",
                    shard_name, len(ids), int(run.valid.sum()), sum(e is not None for e in run.errors),
                    run.unmatched, run.valid.sum() / elapsed if elapsed > 0 else 0.0)
        if run.unmatched:
            logger.warning("shard %s: %d tar sample(s) have no metadata row and were not scored (e.g. %s)",
                           shard_name, run.unmatched, run.unmatched_examples)
        shard_progress.finish()  # after the log lines: a watcher that saw it has seen them too

        out = df.drop(columns=[c for c in (self.image_embedding_column, ERROR_COLUMN, *run.scores)
                               if c in df.columns])
        out[self.image_embedding_column] = frames.embeddings_to_series(run.embeddings, run.valid, out.index, like=df)
        host_index = host.index
        for clf in self.classifiers:
            out[clf.pred_column] = clf.predictions_column(run.scores[clf.pred_column], run.valid, host_index, like=df)
        out[ERROR_COLUMN] = frames.string_series(run.errors, out.index, like=df)
        return out

    def _run_engine(self, ids: list, shard_name: str, tar_path: str | None, storage_options: dict, on_batch,
                    source=None):
        device = self.device or default_device()
        model, preprocess = load_object_on_worker(self.model_cache_key(device),
                                                   self.load_model_and_preprocessor, device)
        scorers = [(clf.pred_column, load_object_on_worker(clf.cache_key(device), clf.load_model, device))
                   for clf in self.classifiers]
        run = ShardColumns(ids, self.embedding_dim, [name for name, _ in scorers])
        forward = make_forward(model, scorers, device, self.normalize_embeddings, self.autocast,
                               pure_bf16=getattr(self, "pure_bf16", False))
        if tar_path is None and source is None:
            run.tar_error = f"shard {shard_name} has no tar file"
        else:
            if source is not None:  # a folder chunk or a Parquet file (nemo_aesthetic.engine.sources)
                items = read_items(source, storage_options, run.seen)
            else:
                items = self.iter_shard_items(fsspec.core.url_to_fs(tar_path, **storage_options)[0], tar_path, run.seen)
            payloads = run.payloads(items)
            release = FreedMemoryReleaser()  # a shard's freed heap back to the system as it goes
            with self.make_batch_preprocessor(model, preprocess, device) as preprocessor:
                for batch in embed_stream(payloads, preprocessor, forward, self.batch_size_on(device), run.fail,
                                          on_batch):
                    run.add(batch)
                    release()
        return run


def _img2dataset_statuses(df) -> list | None:
    """img2dataset's per-row status and error message, to explain rows that have no image."""
    if "status" not in df.columns:
        return None
    def text(values):  # pandas gives NaN, cuDF None, for a missing string
        return [v if isinstance(v, str) else None for v in values]

    messages = text(df["error_message"].tolist()) if "error_message" in df.columns else [None] * len(df)
    return list(zip(text(df["status"].tolist()), messages))
