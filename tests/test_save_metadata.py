"""ImageTextPairDataset.save_metadata: one Parquet per shard, by shard name, written atomically."""
from __future__ import annotations

import os
import uuid

import dask
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from nemo_aesthetic import frames
from nemo_aesthetic.datasets import ImageTextPairDataset


@pytest.fixture(autouse=True)
def _sync_scheduler():
    # save_metadata computes internally; run it in this process, whatever client exists.
    with dask.config.set(scheduler="sync"):
        yield


def open_ds(path):
    return ImageTextPairDataset.from_webdataset(str(path))


def snapshot(root) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in sorted(os.listdir(root))}


def add_embedding(df: pd.DataFrame) -> pd.DataFrame:
    n = len(df)
    matrix = np.arange(n * 4, dtype=np.float32).reshape(n, 4) + df["key"].astype(int).to_numpy()[:, None]
    valid = (df["status"] == "success").to_numpy()
    return df.assign(image_embedding=frames.embeddings_to_series(matrix, valid, df.index))


def with_embedding(metadata):
    return metadata.map_partitions(
        add_embedding, meta=frames.empty_like_with(metadata._meta, {"image_embedding": "embedding:4"}))


def test_writes_one_parquet_per_shard_readable_by_pandas(img2dataset_dir, tmp_path):
    root, _ = img2dataset_dir
    ds = open_ds(root)
    out = tmp_path / "out"
    ds.save_metadata(str(out))

    assert sorted(os.listdir(out)) == ["00000.parquet", "00001.parquet", "00002.parquet"]  # no temp files
    for i, shard in enumerate(ds.shards):
        written = pd.read_parquet(out / f"{shard.name}.parquet")
        expected = ds.metadata.get_partition(i).compute()
        pd.testing.assert_frame_equal(written, expected, check_dtype=False)
        assert written["key"].is_monotonic_increasing


def test_columns_selects_and_orders(img2dataset_dir, tmp_path):
    root, _ = img2dataset_dir
    ds = open_ds(root)
    ds.save_metadata(str(tmp_path / "out"), columns=["status", "key"])
    written = pd.read_parquet(tmp_path / "out" / "00001.parquet")
    assert list(written.columns) == ["status", "key"]
    assert written["key"].tolist() == sorted(pd.read_parquet(root / "00001.parquet")["key"])


def test_shard_names_are_kept_when_numbering_has_gaps(img2dataset_dir, tmp_path):
    root, _ = img2dataset_dir
    for suffix in (".tar", ".parquet", "_stats.json"):
        os.remove(root / f"00001{suffix}")
    open_ds(root).save_metadata(str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path / "out")) == ["00000.parquet", "00002.parquet"]
    assert set(pd.read_parquet(tmp_path / "out" / "00002.parquet")["key"].str[:5]) == {"00002"}


def test_overwrite_in_place_adds_columns_and_reopens(img2dataset_dir):
    root, expected = img2dataset_dir
    tars_before = {n: b for n, b in snapshot(root).items() if n.endswith((".tar", ".json"))}
    ds = open_ds(root)
    ds.metadata = with_embedding(ds.metadata)
    ds.metadata["caption_len"] = ds.metadata["caption"].str.len()
    ds.save_metadata()

    names = sorted(os.listdir(root))
    assert not [n for n in names if n.startswith(".tmp-")]
    assert {n: (root / n).read_bytes() for n in tars_before} == tars_before  # tars untouched

    plain = pd.read_parquet(root / "00000.parquet")  # a plain pandas reader opens our files
    assert {"image_embedding", "caption_len"} <= set(plain.columns)

    again = open_ds(root)
    df = again.metadata.compute()
    assert len(df) == 30 and set(df["key"]) == set(expected)
    matrix, valid = frames.embeddings_to_matrix(df["image_embedding"])
    assert matrix.shape == (30, 4)
    assert valid.tolist() == (df["status"] == "success").tolist()
    # values came back to the rows they were computed for (row r of a shard: 4 * r + key)
    want_col0 = 4 * df.index.to_numpy() + df["key"].astype(int).to_numpy()
    np.testing.assert_array_equal(matrix[valid][:, 0], want_col0[valid].astype(np.float32))


def test_embedding_round_trip_is_exact(img2dataset_dir, tmp_path):
    root, _ = img2dataset_dir
    ds = open_ds(root)
    ds.metadata = with_embedding(ds.metadata)
    want = ds.metadata.compute()
    ds.save_metadata(str(tmp_path / "out"))
    got = open_ds_from_parquet_only(tmp_path / "out", root).metadata.compute()
    m1, v1 = frames.embeddings_to_matrix(want["image_embedding"])
    m2, v2 = frames.embeddings_to_matrix(got["image_embedding"])
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(m1, m2)
    assert got["image_embedding"].isna().sum() == 6


def open_ds_from_parquet_only(out, source):
    """Metadata written elsewhere opens with from_webdataset, and leads back to its source's tars."""
    ds = open_ds(out)
    assert [s.tar for s in ds.shards] == [s.tar for s in open_ds(source).shards]
    return ds


def test_failing_partition_leaves_its_file_untouched_and_no_temp_files(img2dataset_dir):
    root, _ = img2dataset_dir
    before = snapshot(root)
    ds = open_ds(root)

    def boom(df):
        if len(df) and df["key"].iloc[0].startswith("00001"):
            raise RuntimeError("scoring failed for shard 00001")
        return df.assign(flag=True)

    ds.metadata = ds.metadata.map_partitions(boom, meta=ds.metadata._meta.assign(flag=True))
    with pytest.raises(RuntimeError, match="scoring failed"):
        ds.save_metadata()

    after = snapshot(root)
    assert sorted(after) == sorted(before)  # nothing new, in particular no .tmp-* file
    assert after["00001.parquet"] == before["00001.parquet"]
    for name in ("00000.parquet", "00002.parquet"):
        # per-file atomicity: each other file is either as it was or a complete new one
        if after[name] != before[name]:
            assert pd.read_parquet(root / name)["flag"].all()
    for name in before:
        if not name.endswith(".parquet"):
            assert after[name] == before[name]
    assert len(open_ds(root).metadata.compute()) == 30


def test_write_failing_inside_parquet_writer_leaves_old_bytes(img2dataset_dir):
    """The failure happens after the output file is opened: the temp file goes, the old file stays."""
    root, _ = img2dataset_dir
    before = snapshot(root)
    ds = open_ds(root)

    def unwritable(df):
        interval = pa.array([pa.MonthDayNano([1, 2, 3])] * len(df), pa.month_day_nano_interval())
        return df.assign(bad=pd.Series(pd.arrays.ArrowExtensionArray(interval), index=df.index))

    ds.metadata = ds.metadata.map_partitions(unwritable)
    with pytest.raises(pa.ArrowNotImplementedError):
        ds.save_metadata()
    assert snapshot(root) == before


def test_save_to_memory_filesystem(img2dataset_dir):
    root, _ = img2dataset_dir
    ds = open_ds(root)
    fs = fsspec.filesystem("memory")
    base = f"/nemo-aesthetic-test-{uuid.uuid4().hex}"
    try:
        ds.save_metadata(f"memory://{base}/meta", columns=["key", "status"])
        assert sorted(os.path.basename(p) for p in fs.ls(f"{base}/meta", detail=False)) == [
            "00000.parquet", "00001.parquet", "00002.parquet"]
        with fs.open(f"{base}/meta/00002.parquet", "rb") as f:
            written = pd.read_parquet(f)
        assert written["key"].tolist() == sorted(pd.read_parquet(root / "00002.parquet")["key"])
    finally:
        fs.rm(base, recursive=True)
