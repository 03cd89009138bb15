"""CPU stand-ins for the few cuDF and CuPy calls our frames code makes, for tests on machines without
a GPU (the real libraries need CUDA to import).

Each fake offers ONLY the API that the real library has, checked against its source (cuDF and
dask-cuda v26.10.00a, CuPy's documented array API; see BENCHMARKS.md's GPU section), and keeps the
real library's refusals that have bitten us: a CuPy array refuses an implicit ``np.asarray`` with
CuPy's own TypeError, and a cuDF Series has no ``set_axis``. Data lives in pandas/numpy underneath.
Use :func:`install` (a pytest ``monkeypatch``) to make ``import cudf`` / ``import cupy`` find them.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pandas as pd
import pyarrow as pa


# ------------------------------------------------------------------ CuPy
class ndarray:
    """A device array: numpy inside, but no implicit conversion to numpy (as CuPy)."""

    __module__ = "cupy"

    def __init__(self, data):
        self._data = np.asarray(data)

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __dlpack__(self, *args, **kwargs):
        return self._data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._data.__dlpack_device__()

    def get(self):
        return self._data.copy()

    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    size = property(lambda self: self._data.size)
    ndim = property(lambda self: self._data.ndim)

    def __len__(self):
        return len(self._data)

    def _wrap(self, value):
        return ndarray(value) if isinstance(value, np.ndarray) else value

    def __getitem__(self, key):
        return self._wrap(self._data[_unwrap(key)])

    def __setitem__(self, key, value):
        self._data[_unwrap(key)] = _unwrap(value)

    def __invert__(self):
        return ndarray(~self._data)

    def astype(self, dtype, copy=True):
        return ndarray(self._data.astype(dtype, copy=copy))

    def reshape(self, *shape):
        return ndarray(self._data.reshape(*shape))

    def sum(self):
        return ndarray(self._data.sum())

    def any(self):
        return ndarray(self._data.any())

    def all(self):
        return ndarray(self._data.all())

    def __int__(self):
        return int(self._data)

    def __bool__(self):
        return bool(self._data)


def _unwrap(value):
    return value._data if isinstance(value, ndarray) else value


def _cupy_module():
    mod = types.ModuleType("cupy")
    mod.ndarray = ndarray
    mod.float32 = np.float32
    mod.zeros = lambda shape, dtype=float: ndarray(np.zeros(shape, dtype=dtype))
    mod.asnumpy = lambda a: a.get() if isinstance(a, ndarray) else np.asarray(a)
    return mod


# ------------------------------------------------------------------ cuDF
class ListDtype:
    __module__ = "cudf"

    def __init__(self, element_type):
        self.element_type = element_type


class _ListAccessor:
    def __init__(self, series):
        self._series = series

    @property
    def leaves(self):
        arr = pa.array(self._series._pd.tolist(), type=pa.list_(pa.float32()))
        return Series(pd.Series(arr.flatten().to_numpy(zero_copy_only=False)))


class Series:
    """cudf.Series: what our code calls, and nothing pandas has that cuDF lacks (no set_axis)."""

    __module__ = "cudf"

    def __init__(self, data=None, index=None, dtype=None, nan_as_null=True):
        if isinstance(dtype, ListDtype):
            self._pd = pd.Series(list(data or []), dtype=object)
        elif dtype == "str":
            self._pd = pd.Series(list(data), dtype=object)
        else:
            self._pd = pd.Series(data, dtype=dtype)
        if index is not None:
            self.index = index

    @classmethod
    def from_arrow(cls, array):
        out = cls.__new__(cls)
        out._pd = pd.Series(array.to_pylist(), dtype=object)
        return out

    @classmethod
    def _of(cls, pd_series):
        out = cls.__new__(cls)
        out._pd = pd_series
        return out

    @property
    def index(self):
        return Index(self._pd.index)

    @index.setter
    def index(self, value):  # cuDF's IndexedFrame.index setter: same length or ValueError
        value = value._pd if isinstance(value, Index) else pd.Index(value)
        if len(value) != len(self._pd):
            raise ValueError(f"Length mismatch: Expected axis has {len(self._pd)} elements, "
                             f"new values have {len(value)} elements")
        self._pd.index = value

    def __len__(self):
        return len(self._pd)

    def notna(self):
        return Series._of(self._pd.notna())

    @property
    def values(self):
        return ndarray(self._pd.to_numpy())

    def copy(self):
        return Series._of(self._pd.copy())

    @property
    def list(self):
        return _ListAccessor(self)

    def to_arrow(self):
        return pa.array(self._pd.tolist())

    def to_pandas(self):
        return self._pd.copy()


class Index:
    __module__ = "cudf"

    def __init__(self, pd_index):
        self._pd = pd_index

    def __len__(self):
        return len(self._pd)

    def to_pandas(self):
        return self._pd


class DataFrame:
    """cudf.DataFrame: column get/set, drop, copy, index, to_pandas (pandas underneath)."""

    __module__ = "cudf"

    def __init__(self, columns: dict | None = None, index=None):
        self._columns: dict[str, Series] = {}
        self._index = pd.RangeIndex(0) if index is None else pd.Index(index)
        for name, col in (columns or {}).items():
            self[name] = col

    @property
    def index(self):
        return Index(self._index)

    @property
    def columns(self):
        return pd.Index(list(self._columns))

    def __len__(self):
        return len(self._index)

    def __getitem__(self, name):
        return self._columns[name]

    def __setitem__(self, name, col):
        if not isinstance(col, Series):
            col = Series._of(pd.Series(col))
        if len(col) != len(self._index):
            raise ValueError("column length does not match the frame")
        col = col.copy()
        col.index = self._index
        self._columns[name] = col

    def copy(self):
        out = DataFrame(index=self._index)
        out._columns = {k: v.copy() for k, v in self._columns.items()}
        return out

    def drop(self, columns=(), errors="raise"):
        out = self.copy()
        for name in [columns] if isinstance(columns, str) else columns:
            if name in out._columns:
                del out._columns[name]
            elif errors == "raise":
                raise KeyError(name)
        return out

    def to_pandas(self):
        return pd.DataFrame({k: v._pd for k, v in self._columns.items()}, index=self._index)


def _cudf_module():
    mod = types.ModuleType("cudf")
    mod.Series, mod.DataFrame, mod.Index, mod.ListDtype = Series, DataFrame, Index, ListDtype
    mod.from_pandas = lambda obj, nan_as_null=True: (
        Series._of(obj.copy()) if isinstance(obj, pd.Series) else None)
    mod.concat = lambda parts: Series._of(pd.concat([p._pd for p in parts]))
    return mod


def install(monkeypatch) -> None:
    """Make ``import cudf`` and ``import cupy`` give these fakes for one test."""
    monkeypatch.setitem(sys.modules, "cupy", _cupy_module())
    monkeypatch.setitem(sys.modules, "cudf", _cudf_module())
