"""The ``parquet`` source: Parquet files whose rows carry the image bytes.

Two shapes are read, told apart by the column's type:

* img2dataset's ``output_format="parquet"``: a binary column named for the format (``jpg``,
  ``png``, ``webp``), with ``key``, ``caption``, ``status``, ``error_message``...; a failed
  download has a null cell and keeps img2dataset's own status as its reason;
* Hugging Face ``datasets`` (``Dataset.to_parquet``, the Hub's Parquet export, ``hf://``): an
  ``image`` struct column ``{bytes, path}``.

One partition is one file, named after its path below the dataset root, so ``score`` writes one
Parquet per input file. The driver lists files and never opens them (a worker reads the footer);
rows are read one row group at a time, so memory holds a row group, not a file. Each row's key is
its ``key`` column when the file has one (img2dataset), else its row number in the file
(``000000042``); a Hugging Face struct's ``path`` becomes the ``image_path`` column. A struct
that has only a ``path`` (``datasets`` stores file paths so until the bytes are embedded) is that
row's reason: the file it names is not opened, as nothing outside PATH is read. A file with
no image column, or a column of another type, is one clear error naming the columns; a null,
oversized or corrupt cell is that row's reason.
"""
from __future__ import annotations

import posixpath
from typing import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from nemo_aesthetic.atomic import is_temporary
from nemo_aesthetic.datasets.shards import Sample, max_member_bytes
from nemo_aesthetic.engine.sources import LayoutError, Partition, member, sniff_extension

#: Columns taken for the image, in order of preference, when none is named.
IMAGE_COLUMN_NAMES = ("jpg", "png", "webp", "jpeg", "image", "img", "image_bytes", "bytes")

#: Rows decoded at a time within a row group.
BATCH_ROWS = 256


def partitions(path: str, storage_options: dict, image_column: str | None) -> Iterator[Partition]:
    fs, root = fsspec.core.url_to_fs(path, **storage_options)
    root = root.rstrip("/") or "/"
    url = (lambda p: p) if "://" not in path else fs.unstrip_protocol
    if not fs.isdir(root):
        yield Partition("parquet", _stem(posixpath.basename(root)), url(root), image_column=image_column)
        return
    files = sorted(p for p in fs.find(root) if p.lower().endswith(".parquet")
                   and not any(part.startswith(".") or is_temporary(part)
                               for part in posixpath.relpath(p, root).split("/")))
    if not files:
        raise FileNotFoundError(f"no .parquet files in {path}")
    for p in files:
        yield Partition("parquet", _stem(posixpath.relpath(p, root)).replace("/", "_"), url(p),
                        image_column=image_column)


def _stem(name: str) -> str:
    return name[: -len(".parquet")] if name.lower().endswith(".parquet") else name


def _is_bytes(field_type) -> bool:
    return pa.types.is_binary(field_type) or pa.types.is_large_binary(field_type)


def _is_struct_image(field_type) -> bool:
    return (pa.types.is_struct(field_type) and field_type.get_field_index("bytes") >= 0
            and _is_bytes(field_type.field("bytes").type))


def image_column_of(schema: pa.Schema, wanted: str | None, where: str) -> str:
    """The image column of a file's schema (``wanted`` if given), or :class:`LayoutError`."""
    usable = [f.name for f in schema if _is_bytes(f.type) or _is_struct_image(f.type)]
    if wanted is not None:
        if wanted not in schema.names:
            raise LayoutError(f"{where}: no column {wanted!r}; columns: {', '.join(schema.names)}")
        if wanted not in usable:
            raise LayoutError(f"{where}: column {wanted!r} holds {schema.field(wanted).type}, not image bytes "
                              "(binary, or a struct with a binary 'bytes' field)")
        return wanted
    for name in (*IMAGE_COLUMN_NAMES, *usable):
        if name in usable:
            return name
    raise LayoutError(f"{where}: no image column (a binary column such as img2dataset's jpg, or a struct "
                      f"{{bytes, path}} such as Hugging Face's image); columns: {', '.join(schema.names)}; "
                      "name it with image_column=/--image-column")


def _open(partition: Partition, storage_options: dict):
    fs, path = fsspec.core.url_to_fs(partition.path, **storage_options)
    try:
        handle = fs.open(path, "rb")
        file = pq.ParquetFile(handle)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise ValueError(f"cannot read {partition.path}: {type(exc).__name__}: {exc}") from exc
    column = image_column_of(file.schema_arrow, partition.image_column, partition.path)
    return file, column


def row_schema(schema: pa.Schema, column: str) -> pa.Schema:
    """The metadata rows' schema: every column but the image's, a ``key`` and, for a struct image
    column, ``image_path``."""
    fields = [f for f in schema if f.name != column]
    if "key" not in schema.names:
        fields.insert(0, pa.field("key", pa.string()))
    if _is_struct_image(schema.field(column).type) and "image_path" not in schema.names:
        fields.append(pa.field("image_path", pa.string()))
    return pa.schema(fields)


def read_rows(partition: Partition, storage_options: dict) -> pa.Table:
    file, column = _open(partition, storage_options)
    schema = file.schema_arrow
    others = [n for n in schema.names if n != column]
    struct = _is_struct_image(schema.field(column).type)
    parts, offset = [], 0
    for group in range(file.num_row_groups):
        table = file.read_row_group(group, columns=others + ([f"{column}.path"] if struct else []))
        if "key" not in schema.names:
            keys = pa.array([f"{offset + i:09d}" for i in range(table.num_rows)], pa.string())
            table = table.add_column(0, "key", keys)
        if struct and "image_path" not in schema.names:
            paths = table[column].combine_chunks().field("path") if table.num_rows else pa.array([], pa.string())
            table = table.drop_columns([column]).append_column("image_path", paths.cast(pa.string()))
        offset += table.num_rows
        parts.append(table.select(row_schema(schema, column).names))
    out_schema = row_schema(schema, column)
    return pa.concat_tables([t.cast(out_schema) for t in parts]) if parts else out_schema.empty_table()


def read_samples(partition: Partition, storage_options: dict, captions: bool) -> Iterator[Sample]:
    file, column = _open(partition, storage_options)
    names = file.schema_arrow.names
    wanted = [column] + [c for c in ("key", "status", "caption") if c in names and c != column]
    struct = _is_struct_image(file.schema_arrow.field(column).type)
    limit, row = max_member_bytes(), 0
    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
        cells = batch.column(column)
        data_cells = cells.field("bytes") if struct else cells
        path_cells = cells.field("path").to_pylist() if struct else [None] * len(batch)
        keys = batch.column("key").to_pylist() if "key" in names else [f"{row + i:09d}" for i in range(len(batch))]
        statuses = batch.column("status").to_pylist() if "status" in names else [None] * len(batch)
        texts = batch.column("caption").to_pylist() if captions and "caption" in names else [None] * len(batch)
        for i in range(len(batch)):
            cell = data_cells[i]
            key = "" if keys[i] is None else str(keys[i])
            if not cell.is_valid:
                if statuses[i] not in (None, "success"):
                    continue  # a failed download: img2dataset's status is the row's reason
                yield Sample(key, [], refused=f"no image bytes: column {column!r} is null in this row" + (
                    f" (it names a file, {path_cells[i]!r}, which is not read: embed the images' bytes when "
                    "exporting)" if path_cells[i] else ""))
                continue
            data = cell.as_py()
            if len(data) > limit:
                yield Sample(key, [], refused=f"image too large: {len(data)} bytes, over the limit of {limit} bytes")
                continue
            fallback = posixpath.splitext(path_cells[i] or "")[1][1:].lower() or (
                column if column in ("jpg", "png", "webp", "jpeg") else "jpg")
            members = [member(sniff_extension(data, fallback), data)]
            if texts[i] is not None:
                members.append(member("txt", str(texts[i]).encode("utf-8")))
            yield Sample(key, members)
        row += len(batch)
