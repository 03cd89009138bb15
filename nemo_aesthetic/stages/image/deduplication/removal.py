"""ImageDuplicatesRemovalStage (NeMo Curator 1.x's ``stages.image.deduplication.removal``): drop
the images whose id is listed in the Parquet files of a directory (the semantic-dedup workflow's
``duplicates/``), logging each removed id."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds

from nemo_aesthetic.stages.base import ProcessingStage
from nemo_aesthetic.tasks import ImageBatch

logger = logging.getLogger("nemo_aesthetic")


@dataclass
class ImageDuplicatesRemovalStage(ProcessingStage):
    """``removal_parquets_dir``: Parquet files with a ``duplicate_id_field`` column (default
    ``id``) of image ids to remove. The ids are loaded once per worker in :meth:`setup`."""

    removal_parquets_dir: str
    duplicate_id_field: str = "id"
    verbose: bool = False
    num_workers_per_node: int | None = None
    name: str = "image_dedup_filter"
    _ids_to_remove: set = field(default_factory=set)

    def inputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def outputs(self) -> tuple[list[str], list[str]]:
        return ["data"], []

    def setup(self, _worker_metadata=None) -> None:
        fs, root = fsspec.core.url_to_fs(self.removal_parquets_dir)
        files = [f for f in (fs.ls(root, detail=False) if fs.isdir(root) else []) if str(f).endswith(".parquet")]
        if not files:
            raise FileNotFoundError(f"No parquet files found in {self.removal_parquets_dir}")
        # One explicit string schema: an empty duplicates file types its column as null, and ids
        # written as integers are compared as their text, as the images' ids are.
        schema = pa.schema([pa.field(self.duplicate_id_field, pa.string())])
        try:
            table = ds.dataset(files, format="parquet", schema=schema, filesystem=fs).to_table(
                columns=[self.duplicate_id_field])
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as exc:
            raise ValueError(f"{self.removal_parquets_dir}: cannot read column {self.duplicate_id_field!r} of "
                             f"image ids to remove ({exc})") from exc
        self._ids_to_remove.update(v for v in table[self.duplicate_id_field].to_pylist() if v is not None)
        if self.verbose:
            logger.debug("Loaded %d IDs to remove from %r", len(self._ids_to_remove), self.removal_parquets_dir)

    def process(self, task: ImageBatch) -> ImageBatch:
        remove = self._ids_to_remove
        kept = [img for img in task.data if img.image_id not in remove]
        removed = len(task.data) - len(kept)
        if removed:
            logger.info("%s: removed %d near-duplicate image(s): %s", self.name, removed,
                        ", ".join(img.image_id for img in task.data if img.image_id in remove))
        return ImageBatch(data=kept, dataset_name=task.dataset_name, _metadata=task._metadata,
                          _stage_perf=task._stage_perf)

    def xenna_stage_spec(self) -> dict[str, Any]:
        return {"num_workers_per_node": self.num_workers_per_node} if self.num_workers_per_node is not None else {}
