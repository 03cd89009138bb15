"""FilePartitioningStage: the input files, grouped into FileGroupTasks (one partition each)."""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import dask.utils

from nemo_aesthetic.datasets.shards import group_files, list_files
from nemo_aesthetic.stages.base import ProcessingStage, logger
from nemo_aesthetic.stages.resources import Resources
from nemo_aesthetic.tasks import FileGroupTask


@dataclass
class FilePartitioningStage(ProcessingStage):
    """List ``file_paths`` (directories searched recursively; local or fsspec URLs), keep names
    ending in ``file_extensions`` (upstream's default: ``.jsonl``, ``.json``, ``.parquet``; pass
    ``[".tar"]`` for WebDataset shards), and group them ``files_per_partition`` at a time or by
    ``blocksize`` (bytes or a string like ``"512MB"``); default one file per partition.
    ``storage_options`` travel to the reader in each task's ``reader_config``."""

    file_paths: str | list[str]
    files_per_partition: int | None = None
    blocksize: int | str | None = None
    file_extensions: list[str] | None = None
    storage_options: dict[str, Any] | None = None
    limit: int | None = None
    name: str = "file_partitioning"

    def __post_init__(self) -> None:
        if self.files_per_partition is not None and self.blocksize is not None:
            raise ValueError("Both 'files_per_partition' and 'blocksize' were specified, but only one is allowed")
        if self.files_per_partition is not None and self.files_per_partition < 1:
            raise ValueError("files_per_partition must be >= 1")
        self.file_extensions = [e.lower() for e in (self.file_extensions or [".jsonl", ".json", ".parquet"])]
        self.storage_options = dict(self.storage_options or {})
        self._blocksize = dask.utils.parse_bytes(self.blocksize) if self.blocksize is not None else None
        self.resources = Resources(cpus=0.5)

    def list_files(self) -> list[tuple[str, int]]:
        paths = [self.file_paths] if isinstance(self.file_paths, str) else list(map(str, self.file_paths))
        try:
            return list_files(paths, tuple(self.file_extensions), self.storage_options)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"FilePartitioningStage: {exc}") from None

    def process(self, _=None) -> list[FileGroupTask]:
        files = self.list_files()
        groups = group_files(files, self.files_per_partition, self._blocksize)[:self.limit]
        first = self.file_paths if isinstance(self.file_paths, str) else self.file_paths[0]
        logger.info(f"Created {len(groups)} file groups from {len(files)} files")
        return [FileGroupTask(dataset_name=posixpath.basename(str(first).rstrip("/")), data=group,
                              reader_config={"storage_options": self.storage_options},
                              _metadata={"partition_index": i, "total_partitions": len(groups), "source_files": group})
                for i, group in enumerate(groups)]
