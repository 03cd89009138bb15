"""ImageTextPairDataset: a directory of WebDataset shards with one Parquet of metadata per shard.

The metadata is a lazy Dask DataFrame with exactly one partition per ``NNNNN.parquet``, in shard
name order, each sorted by the id column. Partition ``i`` belongs to ``shards[i]``; the
embedders rely on that to find the tar of the rows they process, so keep the partitioning (filter
rows and add columns freely, but do not repartition) before embedding or writing.
"""
from __future__ import annotations

import logging
import posixpath
from typing import Iterable

import dask.dataframe as dd
import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nemo_aesthetic import frames
from nemo_aesthetic.atomic import commit_staged, exclusive_output, location, temporary_name
from nemo_aesthetic.datasets import provenance
from nemo_aesthetic.datasets.resharding import output_shard_writes, write_partition
from nemo_aesthetic.datasets.shards import Shard, discover_shards
from nemo_aesthetic.datasets.schema import conform, schema_and_rows
from nemo_aesthetic.engine.partitions import computed_once, from_shards, map_shards
from nemo_aesthetic.retrying import with_retries
from nemo_aesthetic.datasets.sources import SourceConstructors

logger = logging.getLogger(__name__)


class ImageTextPairDataset(SourceConstructors):
    """Image-text pairs stored as WebDataset tars plus per-shard Parquet metadata.

    Args:
        path: the dataset directory (local path or any fsspec URL).
        metadata: Dask DataFrame, one partition per shard.
        tar_files: the tar of each partition (None where a shard has no tar).
        id_col: the column holding each sample's key (the tar member name without extension).
        shards: the shards the partitions came from (derived from ``tar_files`` if omitted).
        storage_options: fsspec options for ``path`` (e.g. S3 credentials or endpoint).
    """

    def __init__(self, path: str, metadata: dd.DataFrame, tar_files: list, id_col: str,
                 shards: list[Shard] | None = None, storage_options: dict | None = None):
        self.path = path
        self.footer_rows: int | None = None  # rows of all shards, where the footers were read on opening
        self.metadata = metadata
        self.tar_files = list(tar_files)
        self.id_col = id_col
        self.storage_options = storage_options or {}
        self.shards = shards or [
            Shard(_shard_name(t, i), None, t) for i, t in enumerate(self.tar_files)
        ]
        if isinstance(getattr(metadata, "npartitions", None), int) and metadata.npartitions != len(self.shards):
            raise ValueError(
                f"metadata has {metadata.npartitions} partitions but the dataset has {len(self.shards)} "
                "shards; partition i must be shard i (do not repartition the metadata)"
            )
        _warn_of_embeddings_as_text(metadata)

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_webdataset(cls, path: str, id_col: str = "key", storage_options: dict | None = None
                        ) -> "ImageTextPairDataset":
        """Open a directory of ``NNNNN.tar`` + ``NNNNN.parquet`` shards (img2dataset layout).

        Only the Parquet files are read, lazily; the tars are opened by the embedders on the
        workers. The schema is unified across all shards' footers (a column some shards lack is
        null there; types are promoted to a common one). Raises a clear error for a missing path,
        no Parquet, a tar with no Parquet, an unreadable Parquet footer, an ``id_col`` that is not
        a column of every shard, or column types with no common type.
        """
        storage_options = storage_options or {}
        fs, root = fsspec.core.url_to_fs(path, **storage_options)
        root = root.rstrip("/")
        shards = discover_shards(fs, root)
        orphans = [s.tar for s in shards if s.parquet is None and s.tar is not None]
        if orphans:
            names = ", ".join(posixpath.basename(t) for t in orphans[:5])
            raise ValueError(
                f"{len(orphans)} tar file(s) in {path} have no metadata Parquet beside them ({names}); "
                "every NNNNN.tar needs an NNNNN.parquet with one row per sample"
            )
        shards = [s for s in shards if s.parquet is not None]
        if not shards:
            raise FileNotFoundError(f"no NNNNN.parquet metadata files in {path}")
        shards = provenance.tars_from_source(fs, shards, storage_options)  # metadata written elsewhere
        for s in shards:
            if s.tar is None and s.source is None:
                logger.warning("shard %s has metadata but no tar: its rows will be flagged, not scored", s.name)

        schema, rows = schema_and_rows(fs, shards, id_col)
        metadata = from_shards(_read_shard_metadata, shards, fs=fs, id_col=id_col, schema=schema,
                               backend=frames.backend(), meta=frames.arrow_to_frame(schema.empty_table()),
                               label="read-shard-metadata")
        dataset = cls(path, metadata, [s.tar for s in shards], id_col, shards=shards,
                      storage_options=storage_options)
        dataset.footer_rows = rows  # progress counts from these footers, not by reading them again
        return dataset

    # ------------------------------------------------------------------ writing
    def save_metadata(self, path: str | None = None, columns: Iterable[str] | None = None,
                      mode: str = "overwrite", file_metadata: dict[str, str] | None = None) -> dict:
        """Write each partition to ``<path>/<shard name>.parquet`` (default: over the input).

        Each file is written atomically, so a job killed mid-way leaves every file either as it
        was or complete. ``columns`` selects (and orders) the columns written. Each file records
        the directory of its tars in its key-value metadata (``nemo_aesthetic.source``), so
        :meth:`from_webdataset` on ``path`` finds the images again; ``file_metadata`` adds keys.

        ``mode="overwrite"`` (default) writes every shard. ``mode="resume"`` finishes an
        interrupted save: a shard whose file already exists with every column being written is
        skipped and its partition is not computed at all (so no image is embedded twice); the
        others are written. Resume trusts such files to come from the same job: use it to
        continue a run, not to mix runs of different settings.

        The directory is held for the run (:func:`~nemo_aesthetic.atomic.exclusive_output`): a second
        run into it fails at once, and temporary files of a killed run are removed.

        Returns ``{"written": [shard names], "skipped": [shard names]}``.
        """
        if mode not in ("overwrite", "resume"):
            raise ValueError(f"mode must be 'overwrite' or 'resume', not {mode!r}")
        self._check_output(path)
        fs, root = self._fs_for(path)
        with exclusive_output(fs, root):
            return self._save_metadata(fs, root, columns, mode, file_metadata)

    def _save_metadata(self, fs, root: str, columns, mode: str, file_metadata: dict | None) -> dict:
        columns = list(columns) if columns is not None else None
        targets = [posixpath.join(root, f"{shard.name}.parquet") for shard in self.shards]
        wanted = set(columns if columns is not None else self.metadata.columns)
        done = _complete_parquets(fs, targets, wanted) if mode == "resume" else set()
        extra = {**provenance.source_metadata(self, self._fs_for(None)[0]), **(file_metadata or {})}
        todo = [i for i, target in enumerate(targets) if target not in done]
        if todo:  # one task per shard, each carrying its own file name; done shards are not computed
            rows = map_shards(write_partition, self.metadata, targets, fs, columns, extra,
                              meta=pd.Series([], dtype="int64"), label="save-shard-metadata")
            (rows if len(todo) == len(targets) else rows.partitions[todo]).sum().compute()
        written = [s.name for s, t in zip(self.shards, targets) if t not in done]
        skipped = [s.name for s, t in zip(self.shards, targets) if t in done]
        if skipped:
            logger.info("save_metadata(mode='resume'): %d shard(s) already complete, %d written",
                        len(skipped), len(written))
        return {"written": written, "skipped": skipped}

    def to_webdataset(self, path: str, filter_column: str, samples_per_shard: int = 10000,
                      max_shards: int = 5, old_id_col: str | None = None, mode: str = "error") -> dict:
        """Write the rows whose ``filter_column`` is True as a new, resharded WebDataset.

        Output shards ``{i:0{max_shards}d}.tar`` + ``.parquet`` hold ``samples_per_shard``
        samples each (the last one fewer). Samples get new ids by the legacy scheme
        ``shard * 10**ceil(log10(samples_per_shard)) + index``, zero-padded; ``old_id_col``
        keeps the previous id. Every member of a kept sample is copied byte for byte; Parquet
        rows and tar samples match one to one. Output shards are written in parallel, each
        streaming its input tars, so memory is bounded by one sample per task.

        A kept row whose sample is not in its tar (failed download, missing tar) cannot be a
        WebDataset sample: it is left out, logged, and listed in the returned summary. A
        dataset filtered down to nothing writes nothing (no empty tar) and says so in the log;
        the summary then has ``shards == 0``.

        ``mode`` says what to do when ``path`` already holds shards: ``"error"`` (default)
        refuses; ``"overwrite"`` writes the new shards into a staging directory inside ``path``
        and only when all are complete moves them in and deletes the old ones (a failed or killed
        run leaves the old output as it was); ``"resume"`` keeps every output shard whose tar and
        Parquet both exist (each is written atomically, the Parquet last) and writes the rest: the
        plan of output shards depends only on the kept rows, so re-running the same filter
        continues an interrupted run.
        ``path`` must not be the input, however spelled (``DS/.``, ``x/../DS``, a symlink). The
        output is held for the run (:func:`~nemo_aesthetic.atomic.exclusive_output`): a second run
        into it fails at once, and temporaries of a killed run are removed.

        Returns ``{"kept_rows", "written", "shards", "skipped_shards", "missing": [(shard, id), ...]}``
        (``written`` counts samples written by this call).
        """
        if mode not in ("error", "overwrite", "resume"):
            raise ValueError(f"mode must be 'error', 'overwrite' or 'resume', not {mode!r}")
        if samples_per_shard < 1:
            raise ValueError("samples_per_shard must be >= 1")
        if filter_column not in self.metadata.columns:
            raise KeyError(f"filter_column {filter_column!r} is not a column; columns: {list(self.metadata.columns)}")
        fs_out, out_root = self._fs_for(path)
        fs_in, in_root = self._fs_for(None)
        if location(fs_out, out_root) == location(fs_in, in_root):
            raise ValueError(f"to_webdataset cannot write over its own input ({path} is {self.path}); "
                             "choose another path")
        with exclusive_output(fs_out, out_root):
            return self._to_webdataset(path, fs_in, fs_out, out_root, filter_column, samples_per_shard,
                                       max_shards, old_id_col, mode)

    def _to_webdataset(self, path, fs_in, fs_out, out_root, filter_column, samples_per_shard, max_shards,
                       old_id_col, mode) -> dict:
        # (On object stores a "directory" exists only once it holds objects.)
        existing = discover_shards(fs_out, out_root) if fs_out.isdir(out_root) else []
        if existing and mode == "error":
            raise FileExistsError(
                f"{path} already holds {len(existing)} shard(s); pass mode='overwrite' to replace them "
                "or mode='resume' to finish an interrupted run")
        # overwrite: nothing old is touched until the whole new output exists (in a staging dir)
        write_root = temporary_name(out_root) if existing and mode == "overwrite" else out_root
        finished = {s.name for s in existing if s.tar and s.parquet} if mode == "resume" else set()

        # Filter inside each partition: dask's optimizer turns ``df[s.astype(bool)]`` into the mask
        # itself (a Series, not the rows; dask/dask#12172), and a partition-wise filter keeps
        # partition i = shard i by construction. Two passes: the kept counts (one int per shard)
        # plan the output shards, then each output shard's task computes its input partitions again
        # (nothing kept in memory in between, unless the metadata comes fresh from a model).
        kept = self.metadata.map_partitions(_keep_rows, filter_column, meta=self.metadata._meta)
        held = computed_once(kept)
        # The counts read only the filter column where the metadata is read from Parquet.
        counted = held if held is not kept else self.metadata[filter_column]
        counts = [int(c) for c in counted.map_partitions(_count_kept, meta=pd.Series([], dtype="int64")).compute()]
        kept = held
        n_shards, writes = output_shard_writes(kept, self.shards, counts, samples_per_shard, max_shards, finished,
                                               fs_in, fs_out, write_root, self.id_col, old_id_col)
        if not n_shards:
            logger.warning("to_webdataset: no row is kept; nothing written to %s", path)
        try:
            results = list(writes.compute()) if writes.npartitions else []
        except BaseException:
            if write_root != out_root and fs_out.exists(write_root):  # the old output stays as it was
                fs_out.rm(write_root, recursive=True)
            raise
        if write_root != out_root:
            commit_staged(fs_out, write_root, out_root,
                          [p for s in existing for p in (s.tar, s.parquet, s.stats) if p])
        missing = [m for r in results for m in r["missing"]]
        if missing:
            logger.warning("to_webdataset: %d kept row(s) had no sample in their tar and were not written "
                           "(first: %s)", len(missing), missing[:5])
        return {
            "kept_rows": sum(counts),
            "written": sum(r["written"] for r in results),
            "shards": n_shards,
            "skipped_shards": sorted(finished),
            "missing": missing,
        }

    def select_top(self, top_percent: float | None = None, top_k: int | None = None,
                   score_column: str = "aesthetic_score", filter_column: str = "keep") -> dict:
        """Add ``filter_column``: True for the top ``top_percent`` % (of scored rows) or ``top_k``
        rows by ``score_column`` over the whole dataset, exactly, without gathering the scores on
        one machine (``nemo_aesthetic.datasets.selection``). Then ``to_webdataset(path,
        filter_column)`` writes them. Returns ``{"scored", "kept", "threshold"}``.
        """
        from nemo_aesthetic.datasets.selection import mark_top

        self.metadata, summary = mark_top(self.metadata, score_column, top_percent=top_percent, top_k=top_k,
                                          keep_column=filter_column)
        return summary

    # ------------------------------------------------------------------ helpers
    def _fs_for(self, path: str | None):
        fs, root = fsspec.core.url_to_fs(path or self.path, **self.storage_options)
        return fs, root.rstrip("/")


def _warn_of_embeddings_as_text(metadata) -> None:
    """A frame a user built with ``dd.from_pandas`` under dask's default string conversion holds its
    embedding arrays as text (NeMo Curator 0.x switches the conversion off for the whole process on
    import; we do not change a user's config): say so before it is written as truncated text."""
    meta = getattr(metadata, "_meta", None)
    if meta is None:
        return
    for column in (c for c in meta.columns if "embedding" in str(c)):
        if pd.api.types.is_string_dtype(meta[column].dtype) and meta[column].dtype != object:
            logger.warning("metadata column %r holds text, not numbers: dask converted its arrays to strings. "
                           "Build the frame under dask.config.set({'dataframe.convert-string': False})",
                           column)


def _shard_name(tar_path: str | None, index: int) -> str:
    if tar_path is None:
        return f"{index:05d}"
    return posixpath.basename(tar_path).split(".", 1)[0]


def _read_parquet(fs, path: str, columns: list[str] | None = None):
    """The file's table (``columns`` only, those it has, when given). A whole file is fetched in one
    read; a few columns by range reads of the footer and their column chunks only."""
    def pruned():
        with fs.open(path, "rb") as f:
            file = pq.ParquetFile(f)
            return file.read(columns=[c for c in columns if c in file.schema_arrow.names])

    try:  # the bytes are read with retries (a transient error passes), then parsed once
        if columns is not None:
            return with_retries(pruned, what=f"reading {path}")
        return pq.read_table(pa.BufferReader(with_retries(fs.cat_file, path, what=f"reading {path}")))
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise ValueError(f"cannot read metadata file {path}: {type(exc).__name__}: {exc}") from exc


def _read_shard_metadata(shard: Shard, fs, id_col: str, schema, backend: str | None = None, columns=None):
    """One shard's metadata, sorted by ``id_col``; ``columns``: only these (dask's optimizer passes
    the columns a computation uses, so a pass over the scores never reads the embeddings)."""
    if columns is not None:
        columns = list(columns)
        wanted = columns + ([id_col] if id_col not in columns else [])
        schema = pa.schema([schema.field(c) for c in schema.names if c in wanted])
    table = conform(_read_parquet(fs, shard.parquet, None if columns is None else schema.names), schema,
                    shard.parquet)
    df = frames.arrow_to_frame(table, backend)
    df = df.sort_values(id_col, na_position="last", kind="stable").reset_index(drop=True)
    ids = df[id_col]
    dupes = ids[ids.duplicated() & ids.notna()]
    if len(dupes):
        shown = frames.column_values(dupes.drop_duplicates().head(5))
        raise ValueError(f"{shard.parquet}: duplicate ids in column {id_col!r}: {shown}"
                         f"{' ...' if len(dupes) > 5 else ''}")
    return df if columns is None else df[columns]


def _complete_parquets(fs, paths: list[str], columns: set) -> set:
    """The paths that exist as readable Parquet holding every one of ``columns`` (footers only)."""
    from concurrent.futures import ThreadPoolExecutor

    def complete(path):
        try:
            with fs.open(path, "rb") as f:
                return columns <= set(pq.read_schema(f).names)
        except Exception:  # missing, unreadable, or not Parquet at all: not complete
            return False

    with ThreadPoolExecutor(16) as pool:
        return {p for p, ok in zip(paths, pool.map(complete, paths)) if ok}


def _count_kept(part) -> pd.Series:
    """How many rows :func:`_keep_rows` keeps, from the filter column alone (or the kept rows)."""
    if isinstance(part, pd.Series) or not hasattr(part, "columns"):
        return pd.Series([int(part.fillna(False).astype(bool).sum())], dtype="int64")
    return pd.Series([len(part)], dtype="int64")


def _keep_rows(df, filter_column: str):
    """The rows whose ``filter_column`` is True; nulls are not kept."""
    return df[df[filter_column].fillna(False).astype(bool)]
