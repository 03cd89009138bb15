"""IdentifyDuplicatesStage (NeMo Curator 1.x's ``semantic.identify_duplicates``): the ids whose
``cosine_sim_score >= 1 - eps``, several clusters per output file, sorted, in row groups."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import fsspec
import pandas as pd

from nemo_aesthetic.atomic import atomic_open
from nemo_aesthetic.stages.base import ProcessingStage
from nemo_aesthetic.tasks import FileGroupTask
from nemo_aesthetic.stages.deduplication.semantic.utils import disallow_kwargs as _disallow


@dataclass
class IdentifyDuplicatesStage(ProcessingStage):
    """``process_batch`` of up to ``batch_size`` (10) cluster results -> one Parquet of ``id``
    with ``_metadata["num_removed"]``. CPU only."""

    output_path: str
    eps: float
    _num_row_groups_hint: int | None = None
    verbose: bool = False
    read_kwargs: dict[str, Any] | None = None
    write_kwargs: dict[str, Any] | None = None

    def __post_init__(self):
        self.name = "IdentifyDuplicatesStage"
        self.batch_size = 10
        self.read_kwargs = dict(self.read_kwargs or {})
        self.write_kwargs = dict(self.write_kwargs or {})
        _disallow(self.read_kwargs, ["filters", "engine"])
        _disallow(self.write_kwargs, ["index", "row_group_size"])
        self.input_storage_options = self.read_kwargs.pop("storage_options", None)
        self.output_storage_options = self.write_kwargs.pop("storage_options", None)
        self._num_row_groups_hint = self._num_row_groups_hint if self._num_row_groups_hint is not None else 10

    def process(self, task: FileGroupTask) -> FileGroupTask:
        raise NotImplementedError("RemovalStage does not support single task processing")

    def process_tasks(self, tasks):
        """On the executor's streams: ``batch_size`` tasks at a time through :meth:`process_batch`."""
        batch = []
        for task in tasks:
            batch.append(task)
            if len(batch) == self.batch_size:
                yield from self.process_batch(batch)
                batch = []
        if batch:
            yield from self.process_batch(batch)

    def process_batch(self, tasks: list[FileGroupTask]) -> list[FileGroupTask]:
        if not tasks:
            return []
        files = [f for task in tasks for f in task.data]
        parts = [pd.read_parquet(f, storage_options=self.input_storage_options, **self.read_kwargs,
                                 filters=[("cosine_sim_score", ">=", 1.0 - self.eps)], columns=["id"],
                                 engine="pyarrow") for f in files]
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"id": []})
        df = df.sort_values("id", ignore_index=True)
        digest = hashlib.sha256("|".join([*files, tasks[0].task_id]).encode()).hexdigest()[:16]
        output_file = os.path.join(self.output_path, f"{digest}.parquet")
        fs, path = fsspec.core.url_to_fs(output_file, **(self.output_storage_options or {}))
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_open(fs, path, "wb") as f:
            df.to_parquet(f, index=False, row_group_size=max(1, len(df) // self._num_row_groups_hint),
                          **self.write_kwargs)
        return [FileGroupTask(dataset_name=tasks[0].dataset_name, data=[output_file],
                              _metadata={**tasks[0]._metadata, "num_removed": len(df)},
                              _stage_perf=tasks[0]._stage_perf)]
