"""FilePartitioningStage: the dataset's files, grouped into partitions (one Dask task each)."""
from __future__ import annotations

import posixpath
from typing import Sequence

import fsspec

from nemo_aesthetic.atomic import is_temporary
from nemo_aesthetic.stages.base import ProcessingStage
from nemo_aesthetic.stages.tasks import EmptyTask, FileGroupTask

#: Extensions taken when ``file_extensions`` is None: WebDataset shards.
DEFAULT_EXTENSIONS = (".tar", ".tar.gz", ".tgz")


class FilePartitioningStage(ProcessingStage):
    """List the input files and group them into partitions.

    Runs on the client, before anything is scheduled.

    Args:
        file_paths: a directory (searched recursively) or a list of files and directories; local
            paths or any fsspec URL (``s3://bucket/dataset``).
        files_per_partition: files per partition (None: one file per partition, a shard being
            the natural unit of work).
        file_extensions: keep files whose name ends with one of these (None: ``.tar``,
            ``.tar.gz``, ``.tgz``), so an img2dataset directory's Parquet and stats files are
            left out.
        storage_options: fsspec options (credentials, endpoint) for listing and reading.
        limit: at most this many partitions (None: all).
    """

    name = "file_partitioning"
    is_source = True

    def __init__(self, file_paths: str | Sequence[str], files_per_partition: int | None = None,
                 file_extensions: Sequence[str] | None = None, storage_options: dict | None = None,
                 limit: int | None = None):
        if files_per_partition is not None and files_per_partition < 1:
            raise ValueError("files_per_partition must be >= 1")
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        self.file_paths = [file_paths] if isinstance(file_paths, (str, bytes)) or hasattr(file_paths, "__fspath__") \
            else list(file_paths)
        self.file_paths = [str(p) for p in self.file_paths]
        self.files_per_partition = files_per_partition
        self.file_extensions = tuple(e.lower() for e in (file_extensions or DEFAULT_EXTENSIONS))
        self.storage_options = dict(storage_options or {})
        self.limit = limit

    def list_files(self) -> list[str]:
        files: list[str] = []
        for path in self.file_paths:
            fs, root = fsspec.core.url_to_fs(path, **self.storage_options)
            if not fs.exists(root):
                raise FileNotFoundError(f"FilePartitioningStage: path does not exist: {path}")
            found = sorted(fs.find(root)) if fs.isdir(root) else [root]
            for p in found:
                base = posixpath.basename(p)
                if is_temporary(base) or base.startswith("._") or not base.lower().endswith(self.file_extensions):
                    continue
                files.append(fs.unstrip_protocol(p) if _has_protocol(path) else p)
        return files

    def process(self, task: EmptyTask | None = None) -> list[FileGroupTask]:
        files = self.list_files()
        step = self.files_per_partition or 1
        groups = [files[i:i + step] for i in range(0, len(files), step)]
        if self.limit is not None:
            groups = groups[:self.limit]
        dataset = (task.dataset_name if task is not None and task.dataset_name else
                   posixpath.basename(self.file_paths[0].rstrip("/")) if self.file_paths else "")
        self._log("%d files in %d partitions", len(files), len(groups))
        return [FileGroupTask(task_id=f"{i:05d}", dataset_name=dataset, data=group,
                              storage_options=self.storage_options) for i, group in enumerate(groups)]


def _has_protocol(path: str) -> bool:
    return "://" in path
