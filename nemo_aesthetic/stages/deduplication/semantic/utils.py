"""Helpers under NeMo Curator 1.x's names (``semantic.utils``)."""
from __future__ import annotations

import logging
from typing import Any

import pyarrow.parquet as pq
from fsspec.parquet import open_parquet_file

logger = logging.getLogger("nemo_aesthetic")

#: cuDF holds at most this many elements in a column (each embedding value counts as one).
CUDF_MAX_ROWS = 2_000_000_000


def get_array_from_df(df, embedding_col: str):
    """An embedding column -> ``(n, d)`` array (CuPy on cuDF, numpy on pandas); null rows are zeros."""
    from nemo_aesthetic import frames

    return frames.embeddings_to_matrix(df[embedding_col])[0]


def break_parquet_partition_into_groups(files: list[str], embedding_dim: int | None = None,
                                        storage_options: dict[str, Any] | None = None) -> list[list[str]]:
    """``files`` in groups that each stay under cuDF's 2 billion element limit, estimated from the
    first file's row count (times 1.5 for skew) and ``embedding_dim`` (default 1024)."""
    embedding_dim = embedding_dim or 1024
    max_elements = CUDF_MAX_ROWS / embedding_dim
    with open_parquet_file(files[0], storage_options=storage_options) as f:
        rows_per_file = pq.read_metadata(f).num_rows * 1.5
    per_group = max(1, int(max_elements / rows_per_file))
    groups = [files[i:i + per_group] for i in range(0, len(files), per_group)]
    if len(groups) > 1:
        logger.debug("Broke %d files into %d subgroups with max %d files per subgroup", len(files), len(groups),
                     per_group)
    return groups


def disallow_kwargs(kwargs: dict, names: list[str]) -> None:
    """Refuse user read/write keyword arguments that a stage sets itself (as upstream's stages do)."""
    found = [n for n in names if n in kwargs]
    if found:
        raise ValueError(f"Unsupported keyword argument(s) {found}: the stage sets them itself")
