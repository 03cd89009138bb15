"""Near-duplicates marked in a dataset's own metadata (what ``nemo-aesthetic dedup`` writes).

The 1.x workflow and the legacy classes write upstream's separate tables of ids to remove; a user
of the command line wants the answer beside each row instead, in the shard Parquet that ``filter``
and ``report`` already read. :func:`mark_duplicates` adds three columns to every row:

``nearest_id``, ``nearest_similarity``
    the row ranked before this one in its k-means cluster that is most similar to it, and that
    cosine similarity (null for the first row of a cluster): how close the nearest candidate came,
    so eps can be chosen by looking at the pairs on either side of ``1 - eps``.
``duplicate_of``
    ``nearest_id`` where ``nearest_similarity >= 1 - eps``: the row this one near-duplicates, which
    is kept; null for a row that is kept.
``dedup_error``
    why a row was not compared (no embedding, NaN, zero vector); such rows are kept, never lost.

Rows are compared through a row number the engine gives them (shard index and position), never
through the user's id column: ids repeated across shards would otherwise make one row's verdict
land on another. Everything runs on the workers: k-means (:mod:`.kmeans`), one task per cluster for
the pairwise step, and a shuffle of the per-row marks back to their shard's partition; the driver
holds the centroids and one small spec per cluster.
"""
from __future__ import annotations

import logging
import math
import posixpath
import uuid

import numpy as np
import pandas as pd

from nemo_aesthetic.dedup.clusters import SHUFFLE_METHOD, cluster_dirs, read_cluster, write_clusters
from nemo_aesthetic.dedup.embeddings import partition_embeddings
from nemo_aesthetic.dedup.kmeans import PERSIST_BELOW_BYTES, check_embeddings, fit_kmeans
from nemo_aesthetic.dedup.pairwise import cluster_matches
from nemo_aesthetic.dedup.ranking import RankingStrategy
from nemo_aesthetic.engine.partitions import keep_dtypes, map_shards

logger = logging.getLogger("nemo_aesthetic")

DUPLICATE_OF = "duplicate_of"
NEAREST = "nearest_id"
SIMILARITY = "nearest_similarity"
DEDUP_ERROR = "dedup_error"
MARK_COLUMNS = (DUPLICATE_OF, NEAREST, SIMILARITY, DEDUP_ERROR)
#: The engine's own row number: shard index in the high bits, position in the shard in the low.
ROW = "_dedup_row"
_SHARD_BITS = 32


def default_n_clusters(usable_rows: int) -> int:
    """About the square root of the rows: the pairwise work (the sum of the squared cluster sizes)
    then grows as rows^1.5, not rows^2, and each cluster still holds enough rows to find copies."""
    return max(1, min(usable_rows, round(math.sqrt(usable_rows))))


def mark_duplicates(metadata, id_col: str, embedding_col: str, eps: float, work_dir: str,
                    n_clusters: int | None = None, which_to_keep: str = "hard", max_iter: int = 100,
                    random_state: int = 42, batch_size: int = 1024) -> tuple[object, dict]:
    """``metadata`` (one partition per shard) with :data:`MARK_COLUMNS` added, lazily, and a
    summary ``{rows, usable, n_clusters}`` (rows with a usable embedding, clusters used).

    ``work_dir`` receives the rows partitioned by cluster (read by the pairwise step; the caller
    removes it). ``which_to_keep``: "hard" keeps the row farthest from its centroid, "easy" the
    closest, "random" any (upstream's choices); ties go to the first row in shard order.
    """
    import dask.dataframe as dd

    if not 0 <= eps < 1:
        raise ValueError(f"eps must be in [0, 1): rows with cosine similarity >= 1 - eps are duplicates; got {eps}")
    for column in (id_col, embedding_col):
        if column not in metadata.columns:
            raise KeyError(f"column {column!r} not found; columns: {list(metadata.columns)}")
    n_shards = metadata.npartitions
    numbered = map_shards(_number_rows, metadata[[id_col, embedding_col]], range(n_shards),
                          meta=_numbered_meta(metadata, id_col, embedding_col), label="dedup-number-rows")
    rows, usable, width = check_embeddings(numbered, embedding_col, 1 if n_clusters is None else n_clusters)
    summary = {"rows": rows, "usable": usable, "n_clusters": 0}
    marks_meta = pd.DataFrame({"_shard": pd.Series([], dtype="int64"), "_pos": pd.Series([], dtype="int64"),
                               DUPLICATE_OF: pd.Series([], dtype=_nullable(metadata[id_col].dtype)),
                               NEAREST: pd.Series([], dtype=_nullable(metadata[id_col].dtype)),
                               SIMILARITY: pd.Series([], dtype="float32")})
    if usable == 0:
        marks = None
    else:
        k = n_clusters or default_n_clusters(usable)
        summary["n_clusters"] = k
        fitted = fit_kmeans(numbered, embedding_col, k, max_iter=max_iter, random_state=random_state,
                            hold=usable * width * 4 <= PERSIST_BELOW_BYTES, keep_columns=[ROW, id_col])
        clusters_path = posixpath.join(work_dir, "clusters")
        write_clusters(numbered, embedding_col, fitted.centroids, clusters_path, keep_columns=[ROW, id_col],
                       held=fitted.held)
        specs = [files for _, files in cluster_dirs(clusters_path)]
        ranking = keeping_order(which_to_keep, random_state)
        with keep_dtypes():
            marks = dd.from_map(_cluster_marks, specs, meta=marks_meta, label="dedup-cluster-marks",
                                enforce_metadata=False, id_col=id_col, embedding_col=embedding_col, eps=eps,
                                ranking=ranking, batch_size=batch_size)
        # one partition per shard: divisions 0, 1, ..., n_shards put shard i's marks in partition i
        marks = marks.set_index("_shard", divisions=list(range(n_shards + 1)), sort=True,
                                shuffle_method=SHUFFLE_METHOD).clear_divisions()
    marked = dd.map_partitions(_join_marks, metadata.clear_divisions(), *([marks] if marks is not None else []),
                               id_col=id_col, embedding_col=embedding_col, n_shards=n_shards,
                               meta=_marked_meta(metadata, id_col), align_dataframes=False,
                               enforce_metadata=False)
    return marked, summary


def keeping_order(which_to_keep: str, random_state: int = 42) -> RankingStrategy:
    """Upstream's ``which_to_keep`` by cosine distance to the centroid, ties (exact copies sit at
    the same distance) kept by the first row in shard order."""
    if which_to_keep == "random":
        return RankingStrategy.random(random_state)
    if which_to_keep not in ("hard", "easy"):
        raise ValueError(f"which_to_keep must be 'hard', 'easy' or 'random', not {which_to_keep!r}")
    return RankingStrategy(["cosine_dist_to_cent", ROW], ascending=[which_to_keep == "easy", True])


def _numbered_meta(metadata, id_col, embedding_col):
    meta = metadata._meta[[id_col, embedding_col]].copy()
    meta.insert(0, ROW, pd.Series([], dtype="int64"))
    return meta


def _number_rows(frame, shard: int):
    out = frame.copy()
    out.insert(0, ROW, (np.int64(shard) << _SHARD_BITS) + np.arange(len(frame), dtype=np.int64))
    return out


def _cluster_marks(files, id_col, embedding_col, eps, ranking, batch_size):
    """One cluster: each row's best earlier-ranked match, as (shard, position, duplicate_of, similarity)."""
    frame = read_cluster(files, [ROW, id_col, "cosine_dist_to_cent", embedding_col])
    matches = cluster_matches(frame, ROW, embedding_col, ranking, batch_size)
    row = matches["id"].to_numpy(dtype=np.int64)
    best = matches["max_id"].to_numpy(dtype=np.int64)
    similarity = matches["cosine_sim_score"].to_numpy(dtype=np.float32).copy()
    first = row == best  # the first row of a cluster has no earlier row to match
    similarity[first] = np.nan
    ids = pd.Series(frame[id_col].to_numpy(), index=frame[ROW].to_numpy())
    duplicate = ~first & (similarity >= 1 - eps)
    nearest = pd.Series(ids.reindex(best).to_numpy(), dtype=_nullable(frame[id_col].dtype)).where(~first)
    return pd.DataFrame({"_shard": row >> _SHARD_BITS, "_pos": row & ((1 << _SHARD_BITS) - 1),
                         DUPLICATE_OF: nearest.where(duplicate), NEAREST: nearest, SIMILARITY: similarity})


def _nullable(dtype):
    """The id column's dtype, able to hold a null (numpy ints cannot)."""
    return pd.api.types.pandas_dtype("Int64") if pd.api.types.is_integer_dtype(dtype) and not \
        isinstance(dtype, pd.api.extensions.ExtensionDtype) else dtype


def _marked_meta(metadata, id_col):
    meta = metadata._meta.drop(columns=[c for c in MARK_COLUMNS if c in metadata.columns]).copy()
    meta[DUPLICATE_OF] = pd.Series([], dtype=_nullable(metadata._meta[id_col].dtype))
    meta[NEAREST] = pd.Series([], dtype=_nullable(metadata._meta[id_col].dtype))
    meta[SIMILARITY] = pd.Series([], dtype="float32")
    meta[DEDUP_ERROR] = pd.Series([], dtype="string")
    return meta


def _join_marks(frame, marks=None, *, id_col, embedding_col, n_shards, partition_info=None):
    """A shard's rows with their marks (matched by position) and the reason for rows not compared."""
    out = frame.drop(columns=[c for c in MARK_COLUMNS if c in frame.columns]).copy()
    similarity = np.full(len(out), np.nan, dtype=np.float32)
    positions = marks["_pos"].to_numpy(dtype=np.int64) if marks is not None else np.zeros(0, np.int64)
    for column in (DUPLICATE_OF, NEAREST):
        values = pd.Series([None] * len(out), dtype=_nullable(frame[id_col].dtype), index=out.index)
        if len(positions):
            values.iloc[positions] = marks[column].to_numpy()
        out[column] = values
    if len(positions):
        similarity[positions] = marks[SIMILARITY].to_numpy(dtype=np.float32)
    out[SIMILARITY] = similarity
    reasons = partition_embeddings(frame, embedding_col, device="cpu").reasons if len(frame) else []
    out[DEDUP_ERROR] = pd.Series(reasons, dtype="string", index=out.index)
    return out


def scratch_name() -> str:
    """A fresh folder name for the clustered rows, hidden from shard discovery."""
    return f".nemo-aesthetic-dedup-{uuid.uuid4().hex[:12]}"
