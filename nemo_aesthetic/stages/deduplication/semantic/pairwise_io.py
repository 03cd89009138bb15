"""ClusterWiseFilePartitioningStage (NeMo Curator 1.x's ``semantic.pairwise_io``): one task per
``centroid=<k>`` directory of the k-means output."""
from __future__ import annotations

import logging
import posixpath
from typing import Any

import fsspec

from nemo_aesthetic.stages.base import ProcessingStage
from nemo_aesthetic.stages.resources import Resources
from nemo_aesthetic.tasks import FileGroupTask

logger = logging.getLogger("nemo_aesthetic")


class ClusterWiseFilePartitioningStage(ProcessingStage):
    """Lists ``input_path/centroid=<k>/**.parquet``: a :class:`FileGroupTask` per cluster with
    ``_metadata = {"centroid_id": k, "filetype": "parquet"}``."""

    def __init__(self, input_path: str, storage_options: dict[str, Any] | None = None):
        self.input_path = input_path
        self.storage_options = storage_options
        self.name = "pairwise_file_partitioning"
        self.resources = Resources(cpus=0.5)
        self.fs = None
        self.path_normalizer = lambda x: x

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def setup(self, _=None) -> None:
        self.fs, _root = fsspec.core.url_to_fs(self.input_path, **(self.storage_options or {}))
        remote = "://" in str(self.input_path) and not str(self.input_path).startswith("file://")
        self.path_normalizer = self.fs.unstrip_protocol if remote else (lambda x: x)

    def num_workers(self) -> int | None:
        return 1

    def process(self, _=None) -> list[FileGroupTask]:
        if self.fs is None:
            self.setup()
        _fs, root = fsspec.core.url_to_fs(self.input_path, **(self.storage_options or {}))
        centroid_dirs = {}
        for entry in self.fs.ls(root, detail=False):
            name = posixpath.basename(str(entry).rstrip("/"))
            if name.startswith("centroid=") and self.fs.isdir(entry):
                centroid_dirs[int(name.split("=", 1)[1])] = self.path_normalizer(entry)
        if not centroid_dirs:
            logger.warning("No centroid directories found in: %s", self.input_path)
            return []
        dataset_name = posixpath.basename(str(self.input_path).rstrip("/"))
        tasks = []
        for centroid_id, directory in sorted(centroid_dirs.items()):
            local = fsspec.core.url_to_fs(directory)[1] if "://" in directory else directory
            files = sorted(f for f in self.fs.find(local) if f.endswith(".parquet"))
            files = [self.fs.unstrip_protocol(f) if "://" in directory else f for f in files]
            tasks.append(FileGroupTask(dataset_name=dataset_name, data=files,
                                       _metadata={"centroid_id": centroid_id, "filetype": "parquet"}))
        logger.debug("Created %d pairwise tasks", len(tasks))
        return tasks
