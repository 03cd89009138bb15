"""embedding-reader's three layouts: finding the files, reading their headers, streaming their rows.

The layouts are the ones clip-retrieval writes and ``embedding_reader.EmbeddingReader`` reads:

- ``npy``: a folder of ``*.npy`` files, each an ``(n, d)`` float16/float32 array;
- ``parquet_npy``: the same, plus a metadata folder of ``*.parquet`` files paired with the
  ``.npy`` files by sorted position and holding the same number of rows;
- ``parquet``: ``*.parquet`` files with the embeddings in one list column.

Files are found like embedding-reader finds them (``<folder>/**/*.<ext>``, recursively, sorted by
path), so "input order" means the same thing to both. Planning reads only headers (``.npy``
headers, Parquet footers), in a thread pool, so every file's width and row count is checked before
any work is scheduled. Rows are streamed in fixed-size batches, each memory-mapped on its own
(local files) or read into a few reused buffers (object stores), one batch read ahead while the
previous one is scored: a worker's memory is bounded by the batches in flight, not by the file. (Not one ``np.load(mmap_mode="r")`` per file: the touched pages of a
mapping count in the process's RSS until it is unmapped, and Dask pauses or restarts workers by
RSS, so mapping a whole 1.5 GB file would look like a 1.5 GB worker.)
"""
from __future__ import annotations

import dataclasses
import mmap
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nemo_aesthetic.atomic import is_local

FORMATS = ("npy", "parquet_npy", "parquet")


class EmbeddingFileError(ValueError):
    """An input file is unreadable or does not fit the job; the message names the file."""


@dataclasses.dataclass(frozen=True)
class EmbeddingFile:
    """One input file and what its header says."""

    path: str              # the embeddings file (.npy, or .parquet for the parquet layout)
    name: str              # its path under the input folder, without extension: the output's name
    count: int
    dim: int
    dtype: str | None = None        # .npy only: numpy dtype of the array
    header_offset: int = 0          # .npy only: where the rows start
    metadata: str | None = None     # parquet_npy: the paired metadata Parquet


def list_files(fs, root: str, ext: str) -> list[str]:
    """``root/**/*.ext`` sorted by path, as embedding-reader lists them."""
    if not fs.isdir(root):
        raise FileNotFoundError(f"no such folder: {root}")
    return sorted(p for p in fs.glob(posixpath.join(root, "**", f"*.{ext}")) if fs.isfile(p))


def plan_files(fs, root: str, file_format: str, embedding_column: str = "embedding",
               metadata_fs=None, metadata_root: str | None = None, threads: int = 32) -> list[EmbeddingFile]:
    """Every input file with its row count and width, checked for consistency; raises
    :class:`EmbeddingFileError` naming the first file that is unreadable or does not fit."""
    if file_format not in FORMATS:
        raise ValueError(f"file_format must be one of {', '.join(FORMATS)}, not {file_format!r}")
    ext = "parquet" if file_format == "parquet" else "npy"
    paths = list_files(fs, root, ext)
    if not paths:
        raise FileNotFoundError(f"no *.{ext} files under {root}")
    names = [posixpath.relpath(p, root).rsplit(".", 1)[0] for p in paths]
    with ThreadPoolExecutor(threads) as pool:
        if ext == "npy":
            files = list(pool.map(lambda pn: _npy_file(fs, *pn), zip(paths, names)))
        else:
            files = list(pool.map(lambda pn: _parquet_file(fs, *pn, embedding_column), zip(paths, names)))
        if file_format == "parquet_npy":
            files = _pair_metadata(files, metadata_fs, metadata_root, pool)
    known = [f for f in files if f.dim]  # a Parquet whose embeddings are all null says no width
    if not known:
        raise EmbeddingFileError(f"no embeddings under {root}: every file is empty or all null")
    odd = next((f for f in known if f.dim != known[0].dim), None)
    if odd is not None:
        raise EmbeddingFileError(f"{odd.path} holds {odd.dim}-d embeddings but {known[0].path} holds "
                                 f"{known[0].dim}-d ones: one job scores embeddings of one model")
    return [f if f.dim else dataclasses.replace(f, dim=known[0].dim) for f in files]


def _npy_file(fs, path: str, name: str) -> EmbeddingFile:
    try:
        with fs.open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
            size = f.size
    except Exception as exc:
        raise EmbeddingFileError(f"cannot read {path} as a .npy file: {type(exc).__name__}: {exc}") from exc
    if len(shape) != 2 or fortran or dtype.kind != "f":
        raise EmbeddingFileError(f"{path} holds a {dtype} array of shape {shape}"
                                 f"{' in Fortran order' if fortran else ''}; expected (rows, dim) of float16/32")
    row_bytes = shape[1] * dtype.itemsize
    if offset + shape[0] * row_bytes > size:
        _truncated(path, shape[0], (size - offset) // max(row_bytes, 1))
    return EmbeddingFile(path, name, int(shape[0]), int(shape[1]), dtype.str, offset)


def _parquet_file(fs, path: str, name: str, column: str) -> EmbeddingFile:
    try:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            if column not in pf.schema_arrow.names:
                raise EmbeddingFileError(f"{path} has no embedding column {column!r}; columns: {pf.schema_arrow.names}")
            kind = pf.schema_arrow.field(column).type
            dim = kind.list_size if pa.types.is_fixed_size_list(kind) else _first_width(pf, column)
            return EmbeddingFile(path, name, pf.metadata.num_rows, dim)
    except EmbeddingFileError:
        raise
    except Exception as exc:
        raise EmbeddingFileError(f"cannot read {path} as Parquet: {type(exc).__name__}: {exc}") from exc


def _first_width(pf: pq.ParquetFile, column: str) -> int:
    """The width of a variable-length list column: its first non-null row's (0 if none)."""
    for batch in pf.iter_batches(batch_size=1024, columns=[column]):
        lengths = batch.column(0).value_lengths().drop_null()
        if len(lengths):
            return int(lengths[0].as_py())
    return 0


def _pair_metadata(files: list[EmbeddingFile], metadata_fs, metadata_root, pool) -> list[EmbeddingFile]:
    if metadata_root is None:
        raise ValueError("file_format='parquet_npy' needs metadata= (the folder of metadata Parquet files)")
    metas = list_files(metadata_fs, metadata_root, "parquet")
    if len(metas) != len(files):
        raise EmbeddingFileError(
            f"{len(files)} .npy file(s) but {len(metas)} metadata Parquet file(s) under {metadata_root}; they are "
            f"paired by sorted position (first unpaired: {(files[len(metas)].path if len(files) > len(metas) else metas[len(files)])})")

    def rows(path):
        try:
            with metadata_fs.open(path, "rb") as f:
                return pq.ParquetFile(f).metadata.num_rows
        except Exception as exc:
            raise EmbeddingFileError(f"cannot read metadata {path} as Parquet: {type(exc).__name__}: {exc}") from exc

    for f, meta, n in zip(files, metas, pool.map(rows, metas)):
        if n != f.count:
            raise EmbeddingFileError(f"row-count mismatch: {f.path} holds {f.count} embeddings but its metadata "
                                     f"{meta} holds {n} rows")
    return [dataclasses.replace(f, metadata=meta) for f, meta in zip(files, metas)]


# --------------------------------------------------------------------------- rows
def iter_npy_rows(fs, file: EmbeddingFile, start: int, stop: int, batch_rows: int,
                  buffers: int = 3) -> Iterator[np.ndarray]:
    """Rows ``start..stop`` of a .npy file in batches of at most ``batch_rows``.

    Local files: each batch is its own read-only memory map, pre-faulted (``MAP_POPULATE``) by
    whichever thread runs this generator and unmapped when dropped (no copy; resident memory stays
    at the batches alive). Other filesystems: each batch is one ranged read into one of
    ``buffers`` rotating buffers, so a consumer running this generator ahead of itself (a
    :func:`~nemo_aesthetic.prefetch.prefetch` of depth ``buffers - 2``) never sees one overwritten.
    """
    dtype = np.dtype(file.dtype)
    row_bytes = file.dim * dtype.itemsize
    if is_local(fs):
        with open(file.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            for first in range(start, stop, batch_rows):
                n = min(batch_rows, stop - first)
                begin = file.header_offset + first * row_bytes
                if begin + n * row_bytes > size:
                    _truncated(file.path, file.count, (size - file.header_offset) // row_bytes)
                aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
                mapped = mmap.mmap(fh.fileno(), begin - aligned + n * row_bytes, offset=aligned,
                                   flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), prot=mmap.PROT_READ)
                yield np.frombuffer(mapped, dtype, n * file.dim, begin - aligned).reshape(n, file.dim)
        return
    ring = [np.empty((min(batch_rows, max(stop - start, 1)), file.dim), dtype) for _ in range(buffers)]
    # No read-ahead cache: every read is one large request into our buffer.
    with fs.open(file.path, "rb", cache_type="none") as f:
        f.seek(file.header_offset + start * row_bytes)
        for i, first in enumerate(range(start, stop, batch_rows)):
            rows = ring[i % buffers][:min(batch_rows, stop - first)]
            view = memoryview(rows.reshape(-1).view(np.uint8))
            got = 0
            while got < len(view):
                n = f.readinto(view[got:])
                if not n:
                    _truncated(file.path, file.count, first + got // row_bytes)
                got += n
            yield rows


def _truncated(path: str, count: int, row: int):
    raise EmbeddingFileError(f"{path} is truncated: its header promises {count} rows but the data ends "
                             f"inside row {row}")


def iter_parquet_rows(fs, file: EmbeddingFile, column: str, batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(matrix, valid)`` batches of a Parquet embedding column; null rows are zero and invalid."""
    with fs.open(file.path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=[column]):
            yield list_to_matrix(batch.column(0), file.dim, file.path)


def list_to_matrix(arr: pa.Array, dim: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """A (fixed-size or variable) list array of width ``dim`` -> ``((n, dim) array, valid)``, no per-row Python."""
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    n = len(arr)
    if pa.types.is_fixed_size_list(arr.type):
        if arr.type.list_size != dim:
            raise EmbeddingFileError(f"{source}: embeddings of width {arr.type.list_size}, expected {dim}")
        flat = arr.values.slice(arr.offset * dim, n * dim)
    else:
        lengths = arr.value_lengths().to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(valid & (lengths != dim))
        if len(bad):
            raise EmbeddingFileError(f"{source}: row {bad[0]} of a batch has an embedding of length "
                                     f"{int(lengths[bad[0]])}, expected {dim}")
        if not valid.all():  # flatten() skips null rows: scatter the values into zero rows
            values = arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
            matrix = np.zeros((n, dim), values.dtype)
            matrix[valid] = values
            return matrix, valid
        flat = arr.flatten()
    matrix = flat.to_numpy(zero_copy_only=False).reshape(n, dim)
    if not valid.all():
        matrix = np.where(valid[:, None], matrix, 0).astype(matrix.dtype, copy=False)
    return matrix, valid
