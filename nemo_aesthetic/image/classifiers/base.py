"""Classifiers: an embedding column in, one score column out.

A classifier is used either alone, on a dataset that already has embeddings (for example one
reloaded from ``save_metadata``), or fused into an embedder via ``classifiers=[...]``, where it
scores each batch straight after the forward pass and the embeddings never leave the device.
Either way the model comes from ``load_model`` and is loaded once per worker process.

The subclass API is NeMo Curator 0.x's: implement ``load_model(device)`` (a callable from an
``(n, embedding_size)`` float32 tensor to predictions), optionally override ``postprocess(series)``
to turn the raw predictions into the column's values, and fetch default weights in
``_get_default_model()``. ``pred_type`` (``float`` by default, as upstream) is the column's type;
``float`` means the model's float32. Rows without an embedding get a null prediction instead of
failing the partition.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from abc import ABC, abstractmethod
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from nemo_aesthetic import frames
from nemo_aesthetic.distributed import load_object_on_worker


class ImageClassifier(ABC):
    """Base class: subclasses load a scorer ``(n, d) float32 tensor -> (n,) or (n, k) tensor``."""

    def __init__(self, model_name: str, embedding_column: str, pred_column: str, pred_type=float,
                 batch_size: int = -1, embedding_size: int = 768, device: str | None = None):
        self.model_name = model_name
        self.embedding_column = embedding_column
        self.pred_column = pred_column
        self.pred_type = pred_type
        self.batch_size = batch_size
        self.embedding_size = embedding_size
        self.device = device

    @abstractmethod
    def load_model(self, device: str) -> Callable:
        """The scorer on ``device``: ``(n, embedding_size)`` float32 tensor -> ``(n,)`` (or
        ``(n, k)``) tensor. Called once per worker process, on the worker."""

    def postprocess(self, series):
        """The column's values from the raw predictions of the scored rows (override if needed).

        ``series`` holds one prediction per row (float32; a fixed-size list per row when the model
        gives ``k > 1`` values), indexed like those rows; return a series or array of the same
        length. Rows that had no embedding are not passed and come out null.
        """
        return series

    def cache_key(self, device: str) -> str:
        spec = json.dumps([type(self).__module__, type(self).__qualname__, self.model_name,
                           getattr(self, "model_path", None), self.embedding_size, device], default=str)
        return "classifier-" + hashlib.sha1(spec.encode()).hexdigest()

    #: What the model was trained on, for error messages.
    expected_embeddings = "OpenAI CLIP ViT-L/14"

    def follow_backbone(self, model_name: str) -> None:
        """An embedder fusing this classifier names its timm model; heads that depend on the
        backbone (LAION-Aesthetics V1) pick theirs here. Most classifiers have one model."""

    def check_embedding_dim(self, dim: int, source: str = "the embedding column") -> None:
        if dim != self.embedding_size:
            raise ValueError(
                f"{type(self).__name__} expects {self.embedding_size}-d embeddings "
                f"({self.expected_embeddings} image embeddings) but {source} gives {dim}-d ones")

    def __call__(self, dataset):
        """Lazily add ``pred_column`` computed from ``embedding_column`` (null where it is null)."""
        from nemo_aesthetic.datasets.image_text_pair import ImageTextPairDataset

        if self.embedding_column not in dataset.metadata.columns:
            raise KeyError(f"{type(self).__name__}: no column {self.embedding_column!r}; "
                           f"columns: {list(dataset.metadata.columns)}")
        meta_source = dataset.metadata._meta
        dtype = meta_source[self.embedding_column].dtype
        if isinstance(dtype, pd.ArrowDtype) and pa.types.is_fixed_size_list(dtype.pyarrow_dtype):
            # The width is in the column's type: a wrong model fails here, before any work.
            self.check_embedding_dim(dtype.pyarrow_dtype.list_size, source=f"column {self.embedding_column!r}")
        meta = frames.empty_like_with(meta_source.drop(columns=[self.pred_column], errors="ignore"), {})
        meta[self.pred_column] = self.predictions_column(np.zeros(0, np.float32), np.zeros(0, bool), meta.index,
                                                         like=meta)
        metadata = dataset.metadata.map_partitions(self._score_partition, meta=meta, enforce_metadata=False)
        return ImageTextPairDataset(dataset.path, metadata, dataset.tar_files, dataset.id_col,
                                    shards=dataset.shards, storage_options=dataset.storage_options)

    def output_dtype(self):
        """The column's dtype: ``pred_type``, where ``float`` (upstream's) means the model's float32."""
        return np.float32 if self.pred_type in (float, "float") else self.pred_type

    def predictions_column(self, raw, valid: np.ndarray, index, like=None):
        """Raw predictions of all rows (``(n,)`` or ``(n, k)``; ignored where not ``valid``) ->
        the output column: ``postprocess`` on the valid rows, ``output_dtype``, null elsewhere."""
        raw = np.asarray(raw)
        if raw.ndim == 2 and raw.shape[1] == 1:
            raw = raw[:, 0]
        valid = np.asarray(valid, dtype=bool)
        positions = np.flatnonzero(valid)
        rows_index = index[positions]
        if raw.ndim == 1:
            series = pd.Series(raw[positions].astype(np.float32), index=rows_index)
        else:
            series = frames.embeddings_to_series(raw[positions], np.ones(len(positions), bool), rows_index)
        result = self.postprocess(series)
        if len(result) != len(positions):
            raise ValueError(f"{type(self).__name__}.postprocess returned {len(result)} values for "
                             f"{len(positions)} predictions")
        if isinstance(getattr(result, "dtype", None), pd.ArrowDtype):  # still k values per row: a list column
            matrix, _ = frames.embeddings_to_matrix(result)
            full = np.zeros((len(valid), matrix.shape[1]), np.float32)
            full[positions] = matrix
            return frames.embeddings_to_series(full, valid, index, like=like)
        values = result.to_numpy() if hasattr(result, "to_numpy") else np.asarray(result)
        return frames.values_series(values, valid, index, self.output_dtype(), like=like)

    def _score_partition(self, df):
        import torch

        from nemo_aesthetic.image.embedders.base import default_device

        out = df.drop(columns=[self.pred_column], errors="ignore")
        matrix, valid = frames.embeddings_to_matrix(df[self.embedding_column])
        valid = frames.host_array(valid).astype(bool, copy=False)  # a CuPy mask on cuDF
        chunks = []
        if valid.any():
            self.check_embedding_dim(matrix.shape[1], source=f"column {self.embedding_column!r}")
            device = self.device or default_device()
            scorer = load_object_on_worker(self.cache_key(device), self.load_model, device)
            step = self.batch_size if self.batch_size > 0 else len(df)
            with torch.inference_mode():
                for start in range(0, len(df), step):
                    with warnings.catch_warnings():  # a zero-copy Arrow buffer is read-only; we only read it
                        warnings.simplefilter("ignore", UserWarning)
                        chunk = frames.as_tensor(matrix[start:start + step]).to(device)
                    chunks.append(scorer(chunk).float().cpu().numpy().reshape(len(chunk), -1))
        raw = np.concatenate(chunks) if chunks else np.zeros(len(df), np.float32)
        host_index = out.index.to_pandas() if hasattr(out.index, "to_pandas") else out.index
        out[self.pred_column] = self.predictions_column(raw, valid, host_index, like=df)
        return out
