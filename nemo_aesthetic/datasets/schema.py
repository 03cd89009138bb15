"""One schema for a dataset's Parquet metadata, whatever each shard was written with.

Shards written at different times drift: a column added later, a caption column that is null
(so typed null) in one shard and string in another, int32 here and int64 there. The metadata is
read with :func:`unified_schema` (every footer, before any work) and each partition is conformed
to it with :func:`conform`, so score, report and filter see the same columns and types in every
partition.
"""
from __future__ import annotations

import fsspec

from nemo_aesthetic.datasets.shards import Shard


def unified_schema(fs: fsspec.AbstractFileSystem, shards: list[Shard], id_col: str):
    """One Arrow schema for the Parquet files of all ``shards``, read from their footers.

    Shards written at different times drift: a column added later, a caption column that is
    null-typed in one shard and string in another, int32 here and int64 there. Every partition is
    conformed to this schema (:func:`conform`): a column a shard lacks is all null there, and
    types are promoted to a common type (Arrow's permissive unification). Types with no common
    type (a string column that is an integer elsewhere) raise a ValueError naming the column and
    two files before any work is done, as do a missing ``id_col`` and an unreadable footer.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.parquet as pq

    def footer(shard: Shard):
        try:
            with fs.open(shard.parquet, "rb") as f:
                metadata = pq.ParquetFile(f).metadata
                return metadata.schema.to_arrow_schema().remove_metadata(), metadata.num_rows
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise ValueError(f"cannot read metadata file {shard.parquet}: {type(exc).__name__}: {exc}") from exc

    with ThreadPoolExecutor(16) as pool:
        footers = list(pool.map(footer, shards))
    schemas = [schema for schema, _ in footers]
    if any(rows for _, rows in footers):
        # A shard with no rows says nothing about types (pandas writes an empty column as double).
        schemas = [pa.schema([(f.name, pa.null()) for f in schema]) if not rows else schema
                   for schema, rows in footers]
    for shard, schema in zip(shards, schemas):
        if id_col not in schema.names:
            raise KeyError(f"id_col {id_col!r} is not a column of {shard.parquet}; columns: {schema.names}")
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        first_seen: dict[str, tuple] = {}
        for shard, schema in zip(shards, schemas):
            for field in schema:
                seen = first_seen.setdefault(field.name, (field.type, shard.parquet))
                try:
                    pa.unify_schemas([pa.schema([(field.name, seen[0])]), pa.schema([field])],
                                     promote_options="permissive")
                except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise ValueError(
                        f"column {field.name!r} has types with no common type across shards: {seen[0]} in "
                        f"{seen[1]}, {field.type} in {shard.parquet}; rewrite one of them with the other's type"
                    ) from None
        raise ValueError(f"the metadata files' schemas cannot be unified: {exc}") from exc


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
