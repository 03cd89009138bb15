"""Classifiers: an embedding column in, one score column out.

A classifier is used either alone, on a dataset that already has embeddings (for example one
reloaded from ``save_metadata``), or fused into an embedder via ``classifiers=[...]``, where it
scores each batch straight after the forward pass and the embeddings never leave the device.
Either way the model comes from ``load_model`` and is loaded once per worker process.
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
    """Base class: subclasses load a scorer ``(n, d) float32 tensor -> (n,) tensor``."""

    def __init__(self, model_name: str, embedding_column: str, pred_column: str, pred_type=np.float32,
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
        """The scorer on ``device``: ``(n, embedding_size)`` float32 tensor -> ``(n,)`` tensor."""

    def cache_key(self, device: str) -> str:
        spec = json.dumps([type(self).__name__, getattr(self, "model_path", None), device], default=str)
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
        meta = frames.empty_like_with(meta_source.drop(columns=[self.pred_column], errors="ignore"),
                                      {self.pred_column: "float32"})
        metadata = dataset.metadata.map_partitions(self._score_partition, meta=meta, enforce_metadata=False)
        return ImageTextPairDataset(dataset.path, metadata, dataset.tar_files, dataset.id_col,
                                    shards=dataset.shards, storage_options=dataset.storage_options)

    def _score_partition(self, df):
        import torch

        from nemo_aesthetic.image.embedders.base import default_device

        out = df.drop(columns=[self.pred_column], errors="ignore")
        matrix, valid = frames.embeddings_to_matrix(df[self.embedding_column])
        scores = np.zeros(len(df), dtype=np.float32)
        if valid.any():
            self.check_embedding_dim(matrix.shape[1], source=f"column {self.embedding_column!r}")
            device = self.device or default_device()
            scorer = load_object_on_worker(self.cache_key(device), self.load_model, device)
            step = self.batch_size if self.batch_size > 0 else len(df)
            with torch.inference_mode():
                for start in range(0, len(df), step):
                    with warnings.catch_warnings():  # a zero-copy Arrow buffer is read-only; we only read it
                        warnings.simplefilter("ignore", UserWarning)
                        chunk = torch.as_tensor(matrix[start:start + step]).to(device)
                    scores[start:start + step] = scorer(chunk).float().cpu().numpy().reshape(-1)
        out[self.pred_column] = frames.float_series(scores, valid, out.index, like=df)
        return out
