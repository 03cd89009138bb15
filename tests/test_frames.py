"""frames: embedding columns <-> (n, d) float32 arrays, and Parquet any reader can open."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nemo_aesthetic import frames


def _matrix(n=7, d=5, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_round_trip_with_nulls():
    m = _matrix()
    valid = np.array([1, 0, 1, 1, 0, 0, 1], bool)
    s = frames.embeddings_to_series(m, valid, pd.RangeIndex(7))
    assert s.dtype == frames.embedding_dtype(5)
    assert s.isna().tolist() == (~valid).tolist()
    back, back_valid = frames.embeddings_to_matrix(s)
    assert back.dtype == np.float32 and back.shape == (7, 5)
    np.testing.assert_array_equal(back_valid, valid)
    np.testing.assert_array_equal(back[valid], m[valid])
    np.testing.assert_array_equal(back[~valid], 0)


def test_all_null_and_empty_columns():
    s = frames.embeddings_to_series(_matrix(3), np.zeros(3, bool), pd.RangeIndex(3))
    m, v = frames.embeddings_to_matrix(s)
    assert m.shape == (3, 5) and not v.any() and not m.any()
    empty = frames.embeddings_to_series(np.zeros((0, 768), np.float32), np.zeros(0, bool), pd.RangeIndex(0))
    m, v = frames.embeddings_to_matrix(empty)
    assert m.shape == (0, 768) and v.shape == (0,)


def test_index_is_kept():
    index = pd.Index([10, 3, 7])
    s = frames.embeddings_to_series(_matrix(3), np.ones(3, bool), index)
    assert list(s.index) == [10, 3, 7]


@pytest.mark.parametrize("start,stop", [(0, 3), (2, 6), (5, 7), (3, 3)])
def test_sliced_series_read_only_their_rows(start, stop):
    m = _matrix()
    valid = np.array([1, 1, 0, 1, 1, 0, 1], bool)
    s = frames.embeddings_to_series(m, valid, pd.RangeIndex(7))
    part = s.iloc[start:stop]  # an Arrow slice: offset into the parent's buffers
    got, got_valid = frames.embeddings_to_matrix(part)
    np.testing.assert_array_equal(got_valid, valid[start:stop])
    np.testing.assert_array_equal(got[got_valid], m[start:stop][valid[start:stop]])


def test_arrow_array_with_offsets_on_both_levels():
    flat = pa.array(np.arange(60, dtype=np.float32))
    # the child values start at 8, and the list array itself is sliced by 2 rows
    arr = pa.FixedSizeListArray.from_arrays(flat.slice(8, 40), 4).slice(2, 5)
    got, valid = frames.embeddings_to_matrix(pd.Series(pd.arrays.ArrowExtensionArray(arr)))
    assert valid.all()
    np.testing.assert_array_equal(got, np.arange(16, 36, dtype=np.float32).reshape(5, 4))


def test_chunked_column():
    m = _matrix(6)
    chunks = [pa.FixedSizeListArray.from_arrays(pa.array(m[:2].ravel()), 5),
              pa.FixedSizeListArray.from_arrays(pa.array(m[2:].ravel()), 5, mask=pa.array([False, True, False, False]))]
    s = pd.Series(pd.arrays.ArrowExtensionArray(pa.chunked_array(chunks)))
    got, valid = frames.embeddings_to_matrix(s)
    np.testing.assert_array_equal(valid, [1, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(got[valid], m[valid])


def test_variable_size_list_column():
    m = _matrix(4, 3)
    arr = pa.array([list(m[0]), None, list(m[2]), list(m[3])], type=pa.list_(pa.float32()))
    got, valid = frames.embeddings_to_matrix(pd.Series(pd.arrays.ArrowExtensionArray(arr)))
    np.testing.assert_array_equal(valid, [1, 0, 1, 1])
    np.testing.assert_array_equal(got[valid], m[valid])
    sliced = pd.Series(pd.arrays.ArrowExtensionArray(arr.slice(1, 3)))
    got, valid = frames.embeddings_to_matrix(sliced)
    np.testing.assert_array_equal(valid, [0, 1, 1])
    np.testing.assert_array_equal(got[1:], m[2:])


def test_double_lists_become_float32():
    arr = pa.array([[0.1, 0.2], [0.3, 0.4]], type=pa.list_(pa.float64()))
    got, valid = frames.embeddings_to_matrix(pd.Series(pd.arrays.ArrowExtensionArray(arr)))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [[0.1, 0.2], [0.3, 0.4]], rtol=1e-7)


def test_rows_of_different_widths_are_an_error():
    arr = pa.array([[1.0, 2.0], [1.0, 2.0, 3.0]], type=pa.list_(pa.float32()))
    with pytest.raises(ValueError, match="different lengths"):
        frames.embeddings_to_matrix(pd.Series(pd.arrays.ArrowExtensionArray(arr)))


def test_object_column_of_numpy_arrays():
    m = _matrix(5, 4)
    s = pd.Series([m[0], None, m[2], np.nan, m[4].astype(np.float64)], dtype=object)
    got, valid = frames.embeddings_to_matrix(s)
    np.testing.assert_array_equal(valid, [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(got[valid], m[valid])
    np.testing.assert_array_equal(got[~valid], 0)


def test_float_and_string_series_nulls():
    f = frames.float_series(np.array([1.5, 2.5, 3.5]), np.array([1, 0, 1], bool), pd.RangeIndex(3))
    assert f.dtype == np.float32
    assert f.isna().tolist() == [False, True, False]
    assert f.iloc[2] == 3.5
    s = frames.string_series([None, "bad image", None], pd.RangeIndex(3))
    assert s.isna().tolist() == [True, False, True]


def test_column_values_gives_none_for_missing_whatever_the_dtype():
    for dtype in ("string", "str", object):
        s = pd.Series(["a", None, "c"], dtype=dtype)
        assert frames.column_values(s) == ["a", None, "c"], dtype
    assert frames.column_values(pd.Series([1, 2, 3])) == [1, 2, 3]
    assert frames.column_values(pd.Series(pd.array([1, None, 3], dtype="Int64"))) == [1, None, 3]


def test_empty_like_with_gives_the_right_dtypes():
    meta = pd.DataFrame({"key": pd.Series([], dtype=str)})
    out = frames.empty_like_with(meta, {"emb": "embedding:768", "score": "float32", "error": "string"})
    assert out["emb"].dtype == frames.embedding_dtype(768)
    assert out["score"].dtype == np.float32
    assert out["error"].dtype == pd.StringDtype()
    with pytest.raises(ValueError, match="unknown column kind"):
        frames.empty_like_with(meta, {"x": "int8"})


def _frame():
    m = _matrix(4, 768)
    valid = np.array([1, 0, 1, 1], bool)
    df = pd.DataFrame({"key": ["a", "b", "c", "d"], "caption": ["x", None, "z", "w"]})
    df["image_embedding"] = frames.embeddings_to_series(m, valid, df.index)
    df["aesthetic_score"] = frames.float_series(np.array([5.0, 0, 6.0, 4.5]), valid, df.index)
    df["error"] = frames.string_series([None, "no sample for this key in 00000.tar", None, None], df.index)
    return df, m, valid


def test_parquet_from_frame_to_arrow_is_readable_by_plain_pandas(tmp_path):
    df, m, valid = _frame()
    table = frames.frame_to_arrow(df)
    assert table.schema.field("image_embedding").type == pa.list_(pa.float32(), 768)
    path = tmp_path / "00000.parquet"
    pq.write_table(table, path)

    plain = pd.read_parquet(path)  # no types_mapper, no knowledge of our dtypes
    assert list(plain.columns) == list(df.columns)
    assert plain["key"].tolist() == ["a", "b", "c", "d"]
    assert plain["error"].isna().tolist() == [True, False, True, True]
    np.testing.assert_array_equal(plain["aesthetic_score"].isna(), ~valid)
    got, got_valid = frames.embeddings_to_matrix(plain["image_embedding"])
    np.testing.assert_array_equal(got_valid, valid)
    np.testing.assert_array_equal(got[valid], m[valid])

    # and through our own reader the fixed-size dtype comes back, values bit-identical
    ours = frames.arrow_to_frame(pq.read_table(path))
    assert ours["image_embedding"].dtype == frames.embedding_dtype(768)
    got, got_valid = frames.embeddings_to_matrix(ours["image_embedding"])
    np.testing.assert_array_equal(got[valid], m[valid])
    pd.testing.assert_series_equal(ours["aesthetic_score"], df["aesthetic_score"])


def test_parquet_is_readable_by_pyarrow_dataset_and_pandas_with_arrow_dtypes(tmp_path):
    df, m, valid = _frame()
    pq.write_table(frames.frame_to_arrow(df), tmp_path / "00000.parquet")
    arrow = pd.read_parquet(tmp_path / "00000.parquet", dtype_backend="pyarrow")
    got, got_valid = frames.embeddings_to_matrix(arrow["image_embedding"])
    np.testing.assert_array_equal(got[valid], m[valid])
    import pyarrow.dataset as pads

    assert pads.dataset(str(tmp_path), format="parquet").count_rows() == 4
