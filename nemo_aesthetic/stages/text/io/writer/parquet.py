"""ParquetWriter (NeMo Curator 1.x's ``stages.text.io.writer.parquet``): each DocumentBatch to one
Parquet file under ``path``, named from its source files and task id (a rerun overwrites the
same names), written under a temporary name and renamed."""
from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from nemo_aesthetic import frames
from nemo_aesthetic.atomic import atomic_open
from nemo_aesthetic.stages.base import ProcessingStage
from nemo_aesthetic.tasks import DocumentBatch, FileGroupTask

logger = logging.getLogger("nemo_aesthetic")


@dataclass
class ParquetWriter(ProcessingStage):
    """``path``: the output directory (local or fsspec URL; ``write_kwargs["storage_options"]``);
    ``fields``: the columns to write (default all); ``mode``: "ignore" (write beside what is
    there), "overwrite" (clear ``path`` first), "error" (refuse a non-empty ``path``)."""

    path: str
    file_extension: str = "parquet"
    write_kwargs: dict[str, Any] = field(default_factory=dict)
    fields: list[str] | None = None
    name: str = "parquet_writer"
    mode: Literal["ignore", "overwrite", "append", "error"] = "ignore"

    def __post_init__(self):
        self.write_kwargs = dict(self.write_kwargs or {})
        self.storage_options = self.write_kwargs.pop("storage_options", None) or {}
        self.fs, self._fs_path = url_to_fs(self.path, **self.storage_options)
        if self.mode == "overwrite" and self.fs.exists(self._fs_path):
            self.fs.rm(self._fs_path, recursive=True)
        elif self.mode == "error" and self.fs.exists(self._fs_path) and self.fs.ls(self._fs_path):
            raise FileExistsError(f"ParquetWriter: {self.path} is not empty (mode='error')")
        elif self.mode not in ("ignore", "overwrite", "error", "append"):
            raise ValueError(f"Invalid mode {self.mode!r}: use 'ignore', 'overwrite' or 'error'")

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def get_file_extension(self) -> str:
        return self.file_extension

    def process(self, task: DocumentBatch) -> FileGroupTask:
        source_files = task._metadata.get("source_files")
        if source_files:
            name = hashlib.sha256("|".join([*map(str, source_files), task.task_id]).encode()).hexdigest()[:16]
        else:
            name = uuid.uuid4().hex
        file_path = self.fs.sep.join([self._fs_path.rstrip(self.fs.sep), f"{name}.{self.get_file_extension()}"])
        remote = "://" in str(self.path) and not str(self.path).startswith("file://")
        self.write_data(task, file_path)
        written = self.fs.unstrip_protocol(file_path) if remote else file_path
        logger.debug("Written %d records to %s", task.num_items, written)
        return FileGroupTask(dataset_name=task.dataset_name, data=[written],
                             _metadata={**task._metadata, "format": self.get_file_extension()},
                             _stage_perf=task._stage_perf)

    def write_data(self, task: DocumentBatch, file_path: str) -> None:
        df = task.to_pandas()
        if self.fields is not None:
            df = df[self.fields]
        df = _vectors_as_fixed_lists(df)
        self.fs.makedirs(self.fs._parent(file_path), exist_ok=True)
        kwargs = {k: v for k, v in self.write_kwargs.items() if k != "index"}
        with atomic_open(self.fs, file_path, "wb") as f:
            # without pandas' schema metadata: it records a fixed-size-list dtype pandas cannot read back
            pq.write_table(frames.frame_to_arrow(df), f, **kwargs)


def _vectors_as_fixed_lists(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns of equal-length 1-D arrays (embeddings) -> fixed-size float32 lists: one
    Arrow buffer, read back without a Python object per row. Other columns are left alone."""
    out = df
    for name in df.columns:
        column = df[name]
        if column.dtype != object or not len(column):
            continue
        present = [v for v in column if v is not None]
        if not present or not all(isinstance(v, np.ndarray) and v.ndim == 1 for v in present):
            continue
        if len({len(v) for v in present}) != 1 or not all(np.issubdtype(v.dtype, np.floating) for v in present):
            continue
        valid = np.array([v is not None for v in column])
        matrix = np.zeros((len(column), len(present[0])), dtype=np.float32)
        matrix[valid] = np.stack(present)
        out = out.copy() if out is df else out
        out[name] = frames.embeddings_to_series(matrix, valid, df.index)
    return out
