"""The one place that knows pandas from cuDF.

Every other module asks this one to turn Arrow into a partition, a partition into Arrow,
an embedding column into an ``(n, d)`` array, or arrays back into columns. The backend is
chosen the way dask chooses it, by ``dask.config["dataframe.backend"]`` ("pandas" or
"cudf"), so user code switches with one ``dask.config.set`` and our code has no if-branches
on the backend anywhere else.

Embeddings are fixed-size lists of float32 (``pd.ArrowDtype(pa.list_(pa.float32(), d))`` on
pandas, ``list<float32>`` on cuDF): zero-copy to an ``(n, d)`` array, one Arrow buffer per
column rather than one Python object per row, and they round-trip through Parquet.
"""
from __future__ import annotations

from typing import Any, Sequence

import dask
import numpy as np
import pandas as pd
import pyarrow as pa

#: pandas dtype of the per-row ``error`` column (nullable string).
ERROR_DTYPE = "string"


def backend() -> str:
    """The dataframe backend dask is configured for: "pandas" or "cudf"."""
    return dask.config.get("dataframe.backend", "pandas") or "pandas"


def _arrow_types_mapper(arrow_type: pa.DataType):
    # Lists stay Arrow-backed so an embedding column is one buffer, not n numpy objects.
    if pa.types.is_fixed_size_list(arrow_type) or pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return pd.ArrowDtype(arrow_type)
    # Types pandas would hold as ``object``: dask takes object columns for strings and converts
    # them, so a bool column with a null became "True"/"False" strings (both truthy as a filter)
    # and a binary column failed to decode as UTF-8.
    if pa.types.is_boolean(arrow_type):
        return pd.BooleanDtype()
    if (pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)
            or pa.types.is_fixed_size_binary(arrow_type) or pa.types.is_date(arrow_type)
            or pa.types.is_time(arrow_type) or pa.types.is_decimal(arrow_type)
            or pa.types.is_struct(arrow_type) or pa.types.is_map(arrow_type)):
        return pd.ArrowDtype(arrow_type)
    return None


def arrow_to_frame(table: pa.Table, backend_name: str | None = None):
    """Arrow table -> partition of ``backend_name`` (default: the configured backend). A reader that
    runs on workers passes the backend its ``meta`` was built with: a worker's own config may differ."""
    if (backend_name or backend()) == "cudf":
        import cudf

        return cudf.DataFrame.from_arrow(table)
    return table.to_pandas(types_mapper=_arrow_types_mapper)


def frame_to_arrow(df) -> pa.Table:
    """Partition -> Arrow table, ready for Parquet.

    pandas' own schema metadata is dropped: for a fixed-size-list column it records a dtype
    string that pandas itself cannot parse back, which would make the file unreadable with a
    plain ``pd.read_parquet``. Without it every Parquet reader opens our files.
    """
    if _is_cudf(df):
        return df.to_arrow(preserve_index=False).replace_schema_metadata(None)
    table = pa.Table.from_pandas(df, preserve_index=False)
    return table.replace_schema_metadata(None)


def _is_cudf(obj) -> bool:
    return type(obj).__module__.startswith("cudf")


def embedding_dtype(dim: int):
    """The pandas dtype of an embedding column of width ``dim``."""
    return pd.ArrowDtype(pa.list_(pa.float32(), dim))


def embeddings_to_series(matrix: np.ndarray, valid: np.ndarray, index, like=None):
    """``(n, d)`` float32 rows (and a validity mask) -> an embedding column.

    Invalid rows become nulls. ``like`` is a partition of the target backend.
    """
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    n, dim = matrix.shape
    values = pa.array(matrix.reshape(-1), type=pa.float32())
    arr = pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(~np.asarray(valid, dtype=bool)))
    if like is not None and _is_cudf(like):
        import cudf

        return _with_index(cudf.Series.from_arrow(arr.cast(pa.list_(pa.float32()))), index)
    return pd.Series(pd.arrays.ArrowExtensionArray(arr), index=index)


def embeddings_to_matrix(series) -> tuple[np.ndarray, np.ndarray]:
    """An embedding column -> ``((n, d) float32 array, validity mask)``.

    Accepts our fixed-size lists, variable lists (Parquet written by other tools), and object
    columns of arrays. Null rows come back as zero rows with ``valid == False``. On cuDF the
    array is a CuPy array on the GPU (no host round-trip).
    """
    if _is_cudf(series):
        return _cudf_embeddings_to_matrix(series)
    n = len(series)
    if isinstance(series.dtype, pd.ArrowDtype):
        chunked = series.array._pa_array
        arr = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
        valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if pa.types.is_fixed_size_list(arr.type):
            dim = arr.type.list_size
            flat = arr.values.slice(arr.offset * dim, n * dim)
            matrix = flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, dim)
            matrix = np.where(valid[:, None], matrix, np.float32(0)) if not valid.all() else matrix
            return matrix, valid
        if (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)) and n:
            fast = _equal_lists_to_matrix(arr, valid)
            if fast is not None:
                return fast, valid
        rows = arr.to_pylist()
    else:
        rows = list(series)
    return _rows_to_matrix(rows)


def _equal_lists_to_matrix(arr: pa.Array, valid: np.ndarray) -> np.ndarray | None:
    """Variable-size lists that all have one length (Parquet written by other tools) -> an
    ``(n, d)`` array without a Python object per row; None when the lengths differ."""
    lengths = arr.value_lengths().to_numpy(zero_copy_only=False)
    dims = np.unique(lengths[valid]) if valid.any() else np.array([0])
    if len(dims) != 1:
        return None
    matrix = np.zeros((len(arr), int(dims[0])), dtype=np.float32)
    if valid.any():
        matrix[valid] = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, int(dims[0]))
    return matrix


def _rows_to_matrix(rows: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    valid = np.array([r is not None and not (isinstance(r, float) and np.isnan(r)) for r in rows], dtype=bool)
    dims = {len(r) for r, ok in zip(rows, valid) if ok}
    if len(dims) > 1:
        raise ValueError(f"embedding column has rows of different lengths: {sorted(dims)}")
    dim = dims.pop() if dims else 0
    matrix = np.zeros((len(rows), dim), dtype=np.float32)
    for i, (r, ok) in enumerate(zip(rows, valid)):
        if ok:
            matrix[i] = np.asarray(r, dtype=np.float32)
    return matrix, valid


def _cudf_embeddings_to_matrix(series):
    import cupy as cp

    valid = series.notna().values
    filled = series.copy()
    n = len(series)
    leaves = filled.list.leaves.values  # only non-null rows contribute leaves
    dim = int(leaves.size // max(int(valid.sum()), 1)) if n else 0
    matrix = cp.zeros((n, dim), dtype=cp.float32)
    if dim:
        matrix[valid] = leaves.astype(cp.float32).reshape(-1, dim)
    return matrix, valid


def float_series(values: np.ndarray, valid: np.ndarray, index, like=None):
    """float32 scores -> a column where invalid rows are null (NaN on pandas, null on cuDF)."""
    values = np.asarray(values, dtype=np.float32).copy()
    values[~np.asarray(valid, dtype=bool)] = np.nan
    if like is not None and _is_cudf(like):
        import cudf

        return cudf.Series(values, index=index, nan_as_null=True)
    return pd.Series(values, index=index, dtype=np.float32)


def string_series(values: Sequence[str | None], index, like=None):
    """Per-row reasons -> a nullable string column (null where the row is fine)."""
    if like is not None and _is_cudf(like):
        import cudf

        return cudf.Series(list(values), index=index, dtype="str")
    return pd.Series(pd.array(list(values), dtype=ERROR_DTYPE), index=index)


def concat(parts: list):
    """Concatenate partitions of one backend."""
    if _is_cudf(parts[0]):
        import cudf

        return cudf.concat(parts)
    return pd.concat(parts)


def to_host(frame):
    """A partition as pandas, whatever the backend (for writers and reports)."""
    return frame.to_pandas() if _is_cudf(frame) else frame


def column_values(series) -> list:
    """A column's values as a host Python list (ids, captions); missing values are None.

    Missing values come back as None whatever the dtype marks them with (``pd.NA`` in a
    ``string`` column, NaN in ``str``/float ones), so callers can test ``v is None`` (``pd.NA``
    itself cannot be tested for truth).
    """
    if _is_cudf(series):
        return series.to_arrow().to_pylist()
    values = series.tolist()
    missing = np.asarray(series.isna(), dtype=bool)
    if missing.any():
        values = [None if m else v for v, m in zip(values, missing)]
    return values


def empty_like_with(meta, columns: dict):
    """``meta`` plus new empty columns, for ``map_partitions(meta=...)``.

    ``columns`` maps a name to "embedding:<dim>" ("embedding:?" when the width is not known yet),
    "float32" or "string".
    """
    out = meta.copy()
    for name, kind in columns.items():
        if kind == "embedding:?":  # width known only once a model has run: a list column
            out[name] = _empty_list_series(out.index, like=meta)
        elif kind.startswith("embedding:"):
            dim = int(kind.split(":", 1)[1])
            out[name] = embeddings_to_series(np.zeros((0, dim), np.float32), np.zeros(0, bool), out.index, like=meta)
        elif kind == "float32":
            out[name] = float_series(np.zeros(0, np.float32), np.zeros(0, bool), out.index, like=meta)
        elif kind == "string":
            out[name] = string_series([], out.index, like=meta)
        else:
            raise ValueError(f"unknown column kind {kind!r}")
    return out


def values_series(values, valid: np.ndarray, index, dtype, like=None):
    """Values of the valid rows -> a column of ``dtype`` (a numpy/pandas dtype), null elsewhere.

    Floats hold NaN for null; bools and integers become pandas' nullable types (a plain numpy
    bool/int column cannot hold a null); anything else is an object column.
    """
    valid = np.asarray(valid, dtype=bool)
    values = np.asarray(values)
    dtype = pd.api.types.pandas_dtype(dtype)
    kind = getattr(dtype, "kind", "O")
    n = len(valid)
    if kind == "f":
        full = np.full(n, np.nan, dtype=dtype)
        full[valid] = values
        series = pd.Series(full, index=index)
    elif kind in "biu":
        numpy_dtype = np.dtype(getattr(dtype, "numpy_dtype", dtype))
        data = np.zeros(n, dtype=numpy_dtype)
        data[valid] = values
        array = pd.array(data, dtype=pd.api.types.pandas_dtype(
            "boolean" if kind == "b" else numpy_dtype.name.replace("int", "Int").replace("uInt", "UInt")))
        array[~valid] = pd.NA
        series = pd.Series(array, index=index)
    else:
        full = np.full(n, None, dtype=object)
        full[valid] = list(values)
        series = pd.Series(full, index=index, dtype=object)
    if like is not None and _is_cudf(like):
        import cudf

        return cudf.from_pandas(series)
    return series


def _empty_list_series(index, like=None):
    if like is not None and _is_cudf(like):
        import cudf

        return _with_index(cudf.Series([], dtype=cudf.ListDtype("float32")), index)
    return pd.Series(pd.array([], dtype=pd.ArrowDtype(pa.list_(pa.float32()))), index=index)


def _with_index(series, index):
    """A cuDF series labelled by ``index`` (cuDF has no ``Series.set_axis``; its ``index`` setter
    takes any index-like of the same length, as pandas' does)."""
    series.index = index
    return series


def host_array(values) -> np.ndarray:
    """A numpy copy of ``values`` wherever they live: CuPy refuses the implicit ``np.asarray``
    (its arrays raise TypeError), so device arrays are copied with ``cupy.asnumpy``."""
    if type(values).__module__.startswith("cupy"):
        import cupy

        return cupy.asnumpy(values)
    return np.asarray(values)


def as_tensor(values):
    """A torch tensor sharing the memory of ``values``: a numpy array, or a CuPy array on cuDF
    (through DLPack, which orders the two libraries' CUDA streams; no host round-trip)."""
    import torch

    if type(values).__module__.startswith("cupy"):
        return torch.from_dlpack(values)
    return torch.as_tensor(values)
