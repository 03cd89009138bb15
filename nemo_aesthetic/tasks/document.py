"""DocumentBatch (NeMo Curator 1.x's ``nemo_curator.tasks.document``): a table of rows (pandas or
Arrow), here the image ids and embeddings the dedup tutorial writes to Parquet."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from nemo_aesthetic.tasks.tasks import Task

logger = logging.getLogger("nemo_aesthetic")


@dataclass
class DocumentBatch(Task[pa.Table | pd.DataFrame]):
    data: pa.Table | pd.DataFrame = field(default_factory=pa.table)

    def to_pyarrow(self) -> pa.Table:
        if isinstance(self.data, pa.Table):
            return self.data
        if isinstance(self.data, pd.DataFrame):
            return pa.Table.from_pandas(self.data)
        raise TypeError(f"Cannot convert {type(self.data)} to PyArrow table")

    def to_pandas(self) -> pd.DataFrame:
        if isinstance(self.data, pd.DataFrame):
            return self.data
        if isinstance(self.data, pa.Table):
            return self.data.to_pandas()
        raise TypeError(f"Cannot convert {type(self.data)} to Pandas DataFrame")

    @property
    def num_items(self) -> int:
        return len(self.data)

    def get_columns(self) -> list[str]:
        if isinstance(self.data, pd.DataFrame):
            return list(self.data.columns)
        if isinstance(self.data, pa.Table):
            return self.data.column_names
        raise TypeError(f"Unsupported data type: {type(self.data)}")

    def validate(self) -> bool:
        """False (with a warning, as upstream) for an empty batch; it still flows on."""
        if self.num_items <= 0:
            logger.debug("Task %s has no items", self.task_id)
            return False
        return bool(self.get_columns())
