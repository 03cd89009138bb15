"""One schema for a dataset's Parquet metadata, whatever each shard was written with.

Shards written at different times drift: a column added later, a caption column that is null
(so typed null) in one shard and string in another, int32 here and int64 there. The metadata is
read with :func:`unified_schema` (every footer, on the workers, before any work) and each partition is conformed
to it with :func:`conform`, so score, report and filter see the same columns and types in every
partition.
"""
from __future__ import annotations

import dataclasses
import functools

import fsspec

from nemo_aesthetic.datasets.shards import Shard


#: Footers read per task: a footer is a few kilobytes, so one task per batch keeps the scheduler's
#: per-task cost off 200,000 shards while the batches spread over the workers.
FOOTERS_PER_TASK = 500


def unified_schema(fs: fsspec.AbstractFileSystem, shards: list[Shard], id_col: str):
    """:func:`schema_and_rows`' schema."""
    return schema_and_rows(fs, shards, id_col)[0]


def schema_and_rows(fs: fsspec.AbstractFileSystem, shards: list[Shard], id_col: str):
    """``(schema, rows)``: one Arrow schema for the Parquet files of all ``shards``, read from their footers.

    Shards written at different times drift: a column added later, a caption column that is
    null-typed in one shard and string in another, int32 here and int64 there. Every partition is
    conformed to this schema (:func:`conform`): a column a shard lacks is all null there, and
    types are promoted to a common type (Arrow's permissive unification). Types with no common
    type (a string column that is an integer elsewhere) raise a ValueError naming the column and
    two files before any work is done, as do a missing ``id_col`` and an unreadable footer.
    ``rows`` is the files' total row count (from the same footers: progress needs no second read).

    The footers are read once, on the workers (the active distributed client, else local
    threads; local threads for a ``memory://`` filesystem, which other processes do not see): one task per :data:`FOOTERS_PER_TASK` files, their schemas merged by a tree
    reduction, so the driver holds one schema, not one per shard.
    """
    import dask
    import dask.bag as db

    paths = [s.parquet for s in shards]
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    in_process = "memory" in protocols  # a memory:// filesystem exists in this process only
    # a bag's default scheduler is processes: local threads unless a client (or the user) chose one
    scheduler = None if dask.config.get("scheduler", None) and not in_process else "threads"
    bag = db.from_sequence(paths, partition_size=FOOTERS_PER_TASK)
    merged = bag.reduction(functools.partial(_footers, fs, id_col), _merge_all, split_every=32,
                           name="read-footers").compute(scheduler=scheduler)
    unified = merged.typed if merged.any_rows else merged.untyped
    if unified.error is not None:
        raise unified.error
    return unified.schema, merged.rows


@dataclasses.dataclass
class _Unified:
    """A schema unified over some files, the file each column's type was first seen in (for the
    error message), and the error if they cannot be unified."""

    schema: object
    first_seen: dict
    error: Exception | None = None

    def merge(self, other: "_Unified") -> "_Unified":
        import pyarrow as pa

        if self.error is not None or other.error is not None:
            return self if self.error is not None else other
        first_seen = {**other.first_seen, **{k: v for k, v in self.first_seen.items()  # a typed one first
                                             if not pa.types.is_null(v[0]) or k not in other.first_seen}}
        try:
            return _Unified(pa.unify_schemas([self.schema, other.schema], promote_options="permissive"), first_seen)
        except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            for name in set(self.schema.names) & set(other.schema.names):
                try:
                    pa.unify_schemas([pa.schema([self.schema.field(name)]), pa.schema([other.schema.field(name)])],
                                     promote_options="permissive")
                except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    (t1, f1), (t2, f2) = self.first_seen[name], other.first_seen[name]
                    return _Unified(None, {}, ValueError(
                        f"column {name!r} has types with no common type across shards: {t1} in {f1}, {t2} in "
                        f"{f2}; rewrite one of them with the other's type"))
            return _Unified(None, {}, ValueError(f"the metadata files' schemas cannot be unified: {exc}"))


@dataclasses.dataclass
class _Footers:
    """Footers merged: ``typed`` counts an empty file's columns as null-typed (pandas writes an
    empty column as double: a shard with no rows says nothing about types), ``untyped`` as
    written (used when no file has rows)."""

    typed: _Unified
    untyped: _Unified
    rows: int

    @property
    def any_rows(self) -> bool:
        return self.rows > 0

    def merge(self, other: "_Footers") -> "_Footers":
        return _Footers(self.typed.merge(other.typed), self.untyped.merge(other.untyped), self.rows + other.rows)


def _footers(fs, id_col: str, paths) -> _Footers:
    """The batch's footers merged; read by a few threads at once (an object store's latency
    overlaps). Shards mostly share one schema: each distinct schema is unified once, in the order
    first seen (so the columns keep their order and the first file of each type)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        footers = list(pool.map(functools.partial(_footer, fs, id_col), list(paths)))
    first_file: dict = {}
    for path, schema, rows in footers:
        first_file.setdefault((schema, rows > 0), path)
    merged = _merge_all([_one_footer(path, schema, int(has_rows)) for (schema, has_rows), path in first_file.items()])
    return dataclasses.replace(merged, rows=sum(rows for _, _, rows in footers))


def _footer(fs, id_col: str, path: str):
    """``(path, schema, rows)`` of one file's footer."""
    import pyarrow.parquet as pq

    from nemo_aesthetic.retrying import with_retries

    def read():
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata

    try:  # a transient error is retried; a corrupt file is not
        metadata = with_retries(read, what=f"reading the footer of {path}")
        schema, rows = metadata.schema.to_arrow_schema().remove_metadata(), metadata.num_rows
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise ValueError(f"cannot read metadata file {path}: {type(exc).__name__}: {exc}") from exc
    if id_col not in schema.names:
        raise KeyError(f"id_col {id_col!r} is not a column of {path}; columns: {schema.names}")
    return path, schema, rows


def _one_footer(path: str, schema, rows: int) -> _Footers:
    import pyarrow as pa

    typed = schema if rows else pa.schema([(f.name, pa.null()) for f in schema])
    return _Footers(_Unified(typed, {f.name: (f.type, path) for f in typed}),
                    _Unified(schema, {f.name: (f.type, path) for f in schema}), rows)


def _merge_all(parts) -> _Footers:
    return functools.reduce(lambda a, b: a.merge(b), [p for p in parts if p is not None])


def conform(table, schema, source: str):
    """``table`` with exactly ``schema``'s columns and types (missing columns all null)."""
    import pyarrow as pa

    if table.schema.equals(schema, check_metadata=False):
        return table
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(len(table), field.type))
            continue
        try:
            columns.append(table[field.name].cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"{source}: column {field.name!r} cannot be converted to {field.type}: {exc}") from exc
    return pa.Table.from_arrays(columns, schema=schema)
