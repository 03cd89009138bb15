"""The on-disk steps both fronts share: rows written partitioned by cluster, then each cluster's
matches written as one Parquet (run on the workers, one Dask task per cluster)."""
from __future__ import annotations

import logging
import os
import posixpath

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nemo_aesthetic import frames
from nemo_aesthetic.atomic import atomic_open, is_local
from nemo_aesthetic.distributed import compute_client
from nemo_aesthetic.dedup.assignment import assign, assign_held_block
from nemo_aesthetic.dedup.pairwise import cluster_matches

logger = logging.getLogger("nemo_aesthetic")


def absolute(path: str) -> str:
    """A local path made absolute on the client: Dask workers may run in another directory (a
    notebook's ``./out`` must mean the notebook's folder on every worker). URLs are left alone."""
    path = str(path)
    if "://" in path and not path.startswith("file://"):
        return path
    return os.path.abspath(path.removeprefix("file://"))


def read_paths(ddf) -> set[str]:
    """The files and folders ``ddf`` reads, as far as its expression tells: Parquet reads
    (``dd.read_parquet``, ``DocumentDataset.read_parquet``) and our shards (``from_webdataset``).
    Empty for anything else (a frame built in memory): a check on it then has nothing to refuse."""
    found = set()
    for node in ddf.expr.walk():
        name = type(node).__name__
        if name.startswith("ReadParquet") and "path" in getattr(node, "_parameters", ()):
            path = node.operand("path")
            found.update(absolute(p) for p in ([path] if isinstance(path, str) else path or []))
        elif name.startswith("FromMap") and "iterables" in getattr(node, "_parameters", ()):
            for iterable in node.operand("iterables") or ():
                for spec in iterable if isinstance(iterable, (list, tuple)) else ():
                    found.update(absolute(p) for p in (getattr(spec, "parquet", None), getattr(spec, "tar", None))
                                 if isinstance(p, str))
    return found


def refuse_clearing_inputs(ddf, cleared: list[str]) -> None:
    """A clear error before anything is removed when ``ddf`` reads from inside a folder about
    to be cleared (clustering its own earlier output into the same place)."""
    for source in read_paths(ddf):
        for folder in cleared:
            folder = absolute(folder).rstrip("/")
            if source.rstrip("/") == folder or source.startswith(folder + "/"):
                raise ValueError(f"the input {source!r} is inside {folder!r}, which this step clears before writing: "
                                 "write to another output directory")


def check_unique_ids(ddf, id_field: str) -> None:
    """A clear error when an id names two rows anywhere in ``ddf`` (nulls aside).

    Duplicates are removed by id: an id shared by two rows would remove both where one is a
    duplicate, and the same id in two clusters is never seen by a per-cluster check. The ids are
    shuffled on the workers so that equal ids meet in one partition; only a few repeated ids (at
    most 5 per partition) reach the client."""
    start_unique_id_check(ddf, id_field)()


def start_unique_id_check(ddf, id_field: str):
    """:func:`check_unique_ids` started on the cluster without waiting (on a distributed client),
    so that it runs beside the k-means fit; returns the function that waits for it and raises."""
    ids = ddf[[id_field]]
    shuffled = ids.shuffle(on=id_field, npartitions=max(1, ids.npartitions), shuffle_method=SHUFFLE_METHOD)
    repeated = shuffled.map_partitions(_repeated_ids, id_field, meta=ids._meta)
    client = compute_client()
    if client is None:
        found = repeated.compute()
        return lambda: _refuse_repeated(found, id_field)
    future = client.compute(repeated)
    return lambda: _refuse_repeated(future.result(), id_field)


def _refuse_repeated(repeated, id_field: str) -> None:
    if len(repeated):
        shown = frames.column_values(frames.to_host(repeated[id_field]).drop_duplicates().head(5))
        raise ValueError(f"duplicate ids in {id_field!r} ({shown} ...): an id must name one row, or removing a "
                         "duplicate would also remove the other row with its id")


#: Dask's task-based shuffle for the narrow columns dedup moves (ids; per-row marks). Dask would pick
#: its peer-to-peer shuffle whenever a client exists, which fails under the synchronous scheduler
#: ``--cluster sync`` sets (no worker) and logs two WARNING lines per shuffle on a cluster; for a
#: few narrow columns the task shuffle costs no more.
SHUFFLE_METHOD = "tasks"


def _repeated_ids(frame, id_field):
    ids = frame[frame[id_field].notna()]
    return ids[ids[id_field].duplicated()].drop_duplicates().head(5)


def write_clusters(ddf, embedding_field: str, centroids: np.ndarray, output_path: str, keep_columns: list[str],
                   partition_column: str = "centroid", left_out_path: str | None = None,
                   storage_options: dict | None = None, held=None) -> tuple[int, int]:
    """Every partition assigned on its worker and written under
    ``output_path/<partition_column>=<k>/part.<partition>.parquet`` (hive layout, embeddings
    L2-normalised, with ``l2_dist_to_cent`` and ``cosine_dist_to_cent``). Rows that cannot be
    clustered are written with their ``reason`` to ``left_out_path`` (never dropped silently; they
    are never duplicates). Returns (rows clustered, rows left out). Each file is written under a
    temporary name and renamed, so a retried task rewrites it whole.

    ``held``: a fit's rows still held with these columns (``fit_kmeans(keep_columns=...).held``):
    they are written from there, without reading ``ddf`` again, and released."""
    keep_columns = list(dict.fromkeys([*keep_columns, embedding_field]))
    args = (embedding_field, centroids, keep_columns, partition_column, output_path, left_out_path, storage_options)
    if held is not None and held.holds_rows([k for k in keep_columns if k != embedding_field]):
        try:
            counts = pd.concat(held.map_blocks(_assign_block_and_write, *args), ignore_index=True)
        finally:
            held.release()
    else:
        if held is not None:
            held.release()
        meta = pd.DataFrame({"clustered": pd.Series([], dtype="int64"), "left_out": pd.Series([], dtype="int64")})
        counts = ddf.map_partitions(_assign_and_write, *args, meta=meta, enforce_metadata=False).compute()
    return int(counts["clustered"].sum()), int(counts["left_out"].sum())


def _assign_and_write(frame, column, centroids, keep_columns, partition_column, output_path, left_out_path,
                      storage_options, partition_info=None):
    number = (partition_info or {}).get("number", 0)
    return _write_assigned(assign(frame, column, centroids, keep_columns), number, partition_column, output_path,
                           left_out_path, storage_options)


def _assign_block_and_write(block, column, centroids, keep_columns, partition_column, output_path, left_out_path,
                            storage_options, number):
    return _write_assigned(assign_held_block(block, column, centroids, keep_columns), number, partition_column,
                           output_path, left_out_path, storage_options)


def _write_assigned(assignment, number, partition_column, output_path, left_out_path, storage_options):
    """Each cluster's rows of one partition to ``<partition_column>=<k>/part.<number>.parquet``,
    one cluster in memory at a time, and the rows left out (with their reason) beside."""
    fs, root = fsspec.core.url_to_fs(output_path, **(storage_options or {}))
    plain = [c for c in assignment.keep_columns if c != assignment.column]
    for cluster, positions in assignment.clusters():
        directory = posixpath.join(root, f"{partition_column}={cluster}")
        _write_table(fs, assignment.table(positions), posixpath.join(directory, f"part.{number}.parquet"),
                     durable=False, use_dictionary=plain)
    left_out = assignment.left_out
    if left_out is not None and left_out_path:
        lfs, lroot = fsspec.core.url_to_fs(left_out_path, **(storage_options or {}))
        _write_table(lfs, frames.frame_to_arrow(left_out), posixpath.join(lroot, f"part.{number}.parquet"))
        logger.warning("%d row(s) of partition %d not clustered (kept, never marked duplicate): %s",
                       len(left_out), number, dict(frames.to_host(left_out)["reason"].value_counts()))
    return pd.DataFrame({"clustered": [len(assignment.labels)], "left_out": [0 if left_out is None else len(left_out)]})


def _write_table(fs, table, path: str, durable: bool = True, **options) -> None:
    """``options`` for pyarrow's writer. The embeddings are written without dictionary encoding:
    float vectors never repeat enough for a dictionary, and trying one made each write 8x slower
    (and the file larger) in bench/semdedup.py."""
    if not is_local(fs):  # (atomic_open makes a local file's directory itself: one mkdir per file, not two)
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with atomic_open(fs, path, "wb", durable=durable) as f:
        pq.write_table(table, f, **options)


def cluster_dirs(path: str, partition_column: str = "centroid", storage_options: dict | None = None,
                 extension: str = ".parquet") -> list[tuple[int, list[str]]]:
    """``[(cluster id, [files])]`` of ``path/<partition_column>=<k>/``, by cluster id."""
    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    unstrip = (lambda p: p) if protocol in ("file", "local") else (lambda p: f"{protocol}://{p}")
    found = []
    for entry in fs.ls(root, detail=True):
        name = posixpath.basename(entry["name"].rstrip("/"))
        if entry["type"] == "directory" and name.startswith(f"{partition_column}="):
            files = sorted(unstrip(f) for f in fs.find(entry["name"]) if f.endswith(extension))
            found.append((int(name.split("=", 1)[1]), files))
    return sorted(found)


def read_cluster(files: list[str], columns: list[str], storage_options: dict | None = None,
                 arrow_lists: bool = False, **read_kwargs):
    """One cluster's rows from its files (pandas, or cuDF when dask's backend is cuDF).
    ``arrow_lists``: embeddings stay one Arrow column (a matrix without a Python object per row:
    a tenth of a 50 ms pairwise task), other columns as pandas reads them."""
    if frames.backend() == "cudf":
        import cudf

        return cudf.read_parquet(files, columns=columns, storage_options=storage_options, **read_kwargs)
    if arrow_lists and files and not read_kwargs:
        fs, _ = fsspec.core.url_to_fs(files[0], **(storage_options or {}))
        tables = [pq.read_table(fs._strip_protocol(f), columns=columns, filesystem=fs) for f in files]
        return frames.arrow_to_frame(pa.concat_tables(tables), "pandas")
    parts = [pd.read_parquet(f, columns=columns, storage_options=storage_options, **read_kwargs) for f in files]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def write_cluster_matches(files: list[str], output_file: str, id_field: str, embedding_field: str, ranking,
                          batch_size: int = 1024, storage_options: dict | None = None,
                          output_storage_options: dict | None = None, read_kwargs: dict | None = None,
                          write_kwargs: dict | None = None) -> int:
    """Read one cluster, rank it, write ``id``, ``max_id``, ``cosine_sim_score`` to
    ``output_file``; the number of rows."""
    extra = ranking.metadata_cols if ranking.strategy == "sort" else []
    columns = list(dict.fromkeys([id_field, *extra, embedding_field]))
    frame = read_cluster(files, columns, storage_options, arrow_lists=True, **(read_kwargs or {}))
    ids = frames.to_host(frame[id_field])
    if ids.duplicated().any():
        repeated = ids[ids.duplicated()].unique()[:5].tolist()
        raise ValueError(f"duplicate ids in {id_field!r} ({repeated} ...): an id must name one row, or removing "
                         "a duplicate would remove its original too")
    result = cluster_matches(frame, id_field, embedding_field, ranking, batch_size)
    fs, path = fsspec.core.url_to_fs(output_file, **(output_storage_options or {}))
    fs.makedirs(posixpath.dirname(path) or os.curdir, exist_ok=True)
    with atomic_open(fs, path, "wb", durable=False) as f:  # (a cache a rerun clears)
        result.to_parquet(f, index=False, **(write_kwargs or {}))
    return len(result)
