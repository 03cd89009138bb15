"""ImageTextPairDataset.from_webdataset: shards paired by name, lazy metadata, clear errors.

Everything here runs on real tars and real Parquet written by ``factory`` or by img2dataset
itself (``testdata/img2dataset_output``). Dask computes use the synchronous scheduler: these
tests are about what is read, not where.
"""
from __future__ import annotations

import json
import os
import uuid
from collections import Counter

import fsspec
import pandas as pd
import pytest

from factory import tar_members, write_img2dataset
from nemo_aesthetic.datasets import ImageTextPairDataset

IMG2DATASET_RUNS = ["resize_keep_ratio_256", "resize_no_skip_reencode", "disable_all_reencoding"]


def compute(ds):
    return ds.metadata.compute(scheduler="sync")


def partition(ds, i):
    return ds.metadata.get_partition(i).compute(scheduler="sync")


def tar_keys(path) -> set[str]:
    return {name.split(".", 1)[0] for name, _ in tar_members(path)}


# ---------------------------------------------------------------- layout and pairing
def test_one_sorted_partition_per_parquet_with_failed_rows_kept(img2dataset_dir):
    root, expected = img2dataset_dir
    ds = ImageTextPairDataset.from_webdataset(str(root), id_col="key")

    assert ds.metadata.npartitions == 3
    assert [s.name for s in ds.shards] == ["00000", "00001", "00002"]
    for i, shard in enumerate(ds.shards):
        assert shard.parquet == str(root / f"{shard.name}.parquet")
        assert shard.tar == str(root / f"{shard.name}.tar")
        assert shard.stats == str(root / f"{shard.name}_stats.json")  # stats beside, not a shard
        assert ds.tar_files[i] == shard.tar

        on_disk = pd.read_parquet(shard.parquet)["key"].tolist()
        assert on_disk != sorted(on_disk), "factory writes completion order; the test needs it unsorted"
        part = partition(ds, i)
        keys = part["key"].tolist()
        assert keys == sorted(on_disk)  # the partition is this shard's rows, sorted by id
        assert list(part.index) == list(range(len(part)))
        # every success row has its sample in the tar of the same partition, and only those
        success = set(part.loc[part["status"] == "success", "key"])
        assert tar_keys(shard.tar) == success

    df = compute(ds)
    assert len(df) == len(expected) == 30  # failed downloads keep their rows
    assert dict(zip(df["key"], df["status"])) == {k: v["status"] for k, v in expected.items()}
    assert (df["status"] == "failed_to_download").sum() == 6
    assert df.loc[df["key"] == "000000001", "caption"].isna().all()  # a null caption stays null


@pytest.mark.parametrize("run", IMG2DATASET_RUNS)
def test_real_img2dataset_output_matches_expected_summary(testdata, run):
    summary = json.loads((testdata / "img2dataset_output" / "expected_summary.json").read_text())
    root = testdata / "img2dataset_output" / run
    ds = ImageTextPairDataset.from_webdataset(str(root))

    assert [s.name for s in ds.shards] == ["00000", "00001", "00002"]
    assert ds.metadata.npartitions == 3
    total = 0
    for i, shard in enumerate(ds.shards):
        want = summary[f"{run}/{shard.name}"]
        part = partition(ds, i)
        assert len(part) == want["parquet_rows"]
        assert part["key"].tolist() == sorted(want["parquet_key_order"])
        assert dict(Counter(part["status"])) == want["status_counts"]
        for failed in want["failed"]:
            row = part[part["key"] == failed["key"]]
            assert row["status"].tolist() == [failed["status"]]
        # the tar paired with this partition is the one holding this shard's samples
        assert shard.tar.endswith(f"{shard.name}.tar")
        assert want["tar_member_order"] == list(dict.fromkeys(
            name.split(".", 1)[0] for name, _ in tar_members(shard.tar)))
        assert set(want["tar_member_order"]) == set(part.loc[part["status"] == "success", "key"])
        assert json.loads(open(shard.stats).read())["count"] == want["parquet_rows"]
        total += len(part)
    assert len(compute(ds)) == total == 28


def test_missing_middle_tar_leaves_later_shards_paired_by_name(img2dataset_dir, caplog):
    root, expected = img2dataset_dir
    os.remove(root / "00001.tar")
    with caplog.at_level("WARNING"):
        ds = ImageTextPairDataset.from_webdataset(str(root))
    assert "00001" in caplog.text

    assert [s.name for s in ds.shards] == ["00000", "00001", "00002"]
    assert ds.shards[1].tar is None and ds.tar_files[1] is None
    assert ds.shards[2].tar == str(root / "00002.tar")
    for i in (0, 2):
        part = partition(ds, i)
        assert {k[:5] for k in part["key"]} == {ds.shards[i].name}
        assert tar_keys(ds.shards[i].tar) == set(part.loc[part["status"] == "success", "key"])
    # the metadata of the shard without a tar still reads
    part1 = partition(ds, 1)
    assert sorted(part1["key"]) == sorted(k for k, v in expected.items() if v["shard"] == "00001")


def test_gap_in_shard_numbering_pairs_by_name_not_position(img2dataset_dir):
    root, expected = img2dataset_dir
    for suffix in (".tar", ".parquet", "_stats.json"):
        os.remove(root / f"00001{suffix}")
    ds = ImageTextPairDataset.from_webdataset(str(root))

    assert [s.name for s in ds.shards] == ["00000", "00002"]
    assert ds.metadata.npartitions == 2
    part = partition(ds, 1)
    assert ds.shards[1].tar == str(root / "00002.tar")
    assert {k[:5] for k in part["key"]} == {"00002"}
    assert tar_keys(ds.tar_files[1]) == set(part.loc[part["status"] == "success", "key"])


def test_missing_middle_parquet_is_an_error_naming_the_orphan_tar(img2dataset_dir):
    root, _ = img2dataset_dir
    os.remove(root / "00001.parquet")
    with pytest.raises(ValueError, match=r"00001\.tar"):
        ImageTextPairDataset.from_webdataset(str(root))


def test_reading_metadata_never_opens_the_tars(img2dataset_dir):
    root, expected = img2dataset_dir
    before = compute(ImageTextPairDataset.from_webdataset(str(root)))
    (root / "00001.tar").write_bytes(os.urandom(4096))  # not a tar at all
    os.remove(root / "00002.tar")
    os.symlink(root / "nowhere.tar", root / "00002.tar")  # dangling: any open() fails
    with pytest.raises(OSError):
        open(root / "00002.tar", "rb")

    ds = ImageTextPairDataset.from_webdataset(str(root))
    assert ds.shards[1].tar.endswith("00001.tar") and ds.shards[2].tar.endswith("00002.tar")
    pd.testing.assert_frame_equal(compute(ds), before)


# ---------------------------------------------------------------- errors
def test_missing_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(FileNotFoundError, match="no_such_dataset"):
        ImageTextPairDataset.from_webdataset(str(missing))


def test_path_that_is_a_file_is_a_clear_error(img2dataset_dir):
    root, _ = img2dataset_dir
    with pytest.raises(NotADirectoryError, match="00000.parquet"):
        ImageTextPairDataset.from_webdataset(str(root / "00000.parquet"))


def test_directory_without_parquet_is_a_clear_error(tmp_path):
    (tmp_path / "README.txt").write_text("not a dataset")
    with pytest.raises(FileNotFoundError, match="no NNNNN.parquet"):
        ImageTextPairDataset.from_webdataset(str(tmp_path))


def test_id_col_not_a_column_lists_the_columns(img2dataset_dir):
    root, _ = img2dataset_dir
    with pytest.raises(KeyError) as err:
        ImageTextPairDataset.from_webdataset(str(root), id_col="sample_id")
    msg = str(err.value)
    assert "sample_id" in msg
    for col in ("url", "key", "caption", "status"):
        assert col in msg


def test_id_col_missing_from_a_later_shard_fails_before_any_work_naming_it(img2dataset_dir):
    root, _ = img2dataset_dir
    df = pd.read_parquet(root / "00002.parquet").rename(columns={"key": "other"})
    df.to_parquet(root / "00002.parquet", index=False)
    with pytest.raises(KeyError, match=r"00002\.parquet"):  # every footer is read when opening
        ImageTextPairDataset.from_webdataset(str(root))


def test_duplicate_ids_fail_on_compute_naming_the_file(img2dataset_dir):
    root, _ = img2dataset_dir
    df = pd.read_parquet(root / "00001.parquet")
    dup = df.iloc[[3]].assign(url="http://elsewhere/dup.jpg")
    pd.concat([df, dup]).to_parquet(root / "00001.parquet", index=False)

    ds = ImageTextPairDataset.from_webdataset(str(root))  # lazy: no error yet
    assert len(partition(ds, 0)) == 10  # other shards are fine
    with pytest.raises(ValueError, match=r"00001\.parquet") as err:
        compute(ds)
    assert df["key"].iloc[3] in str(err.value)


def test_tar_without_parquet_is_an_error_naming_it(img2dataset_dir):
    root, _ = img2dataset_dir
    write_img2dataset(root / "extra", n_shards=1)
    os.rename(root / "extra" / "00000.tar", root / "00007.tar")
    with pytest.raises(ValueError, match=r"00007\.tar"):
        ImageTextPairDataset.from_webdataset(str(root))


def test_parquet_without_tar_still_reads(img2dataset_dir):
    root, expected = img2dataset_dir
    os.remove(root / "00002.tar")
    ds = ImageTextPairDataset.from_webdataset(str(root))
    assert ds.shards[2].tar is None
    assert ds.shards[0].tar is not None and ds.shards[1].tar is not None
    assert len(compute(ds)) == 30


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_first_parquet_is_an_error_naming_it(img2dataset_dir, damage):
    root, _ = img2dataset_dir
    path = root / "00000.parquet"
    good = path.read_bytes()
    path.write_bytes({"garbage": os.urandom(2000), "truncated": good[: len(good) // 2], "empty": b""}[damage])
    with pytest.raises(ValueError, match=r"00000\.parquet"):
        ImageTextPairDataset.from_webdataset(str(root))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_later_parquet_fails_before_any_work_naming_it(img2dataset_dir, damage):
    root, _ = img2dataset_dir
    path = root / "00001.parquet"
    good = path.read_bytes()
    path.write_bytes(os.urandom(2000) if damage == "garbage" else good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"cannot read metadata file .*00001\.parquet"):
        ImageTextPairDataset.from_webdataset(str(root))  # every footer is read when opening


def test_leftover_temporary_files_are_not_shards(img2dataset_dir):
    """An interrupted atomic write leaves ``.tmp-*``; it must not become a shard or an orphan."""
    root, _ = img2dataset_dir
    (root / ".tmp-00003.parquet.abc").write_bytes(b"half")
    (root / ".tmp-00001.tar.abc").write_bytes(b"half")
    ds = ImageTextPairDataset.from_webdataset(str(root))
    assert [s.name for s in ds.shards] == ["00000", "00001", "00002"]
    assert len(compute(ds)) == 30


# ---------------------------------------------------------------- fsspec URLs
def test_file_url_reads_like_a_plain_path(img2dataset_dir):
    root, _ = img2dataset_dir
    plain = ImageTextPairDataset.from_webdataset(str(root))
    url = ImageTextPairDataset.from_webdataset(f"file://{root}/")
    assert [s.name for s in url.shards] == [s.name for s in plain.shards]
    assert [os.path.basename(t) for t in url.tar_files] == ["00000.tar", "00001.tar", "00002.tar"]
    pd.testing.assert_frame_equal(compute(url), compute(plain))


def test_memory_filesystem_url(img2dataset_dir):
    root, _ = img2dataset_dir
    fs = fsspec.filesystem("memory")
    base = f"/nemo-aesthetic-test-{uuid.uuid4().hex}"
    try:
        for name in sorted(os.listdir(root)):
            fs.pipe(f"{base}/ds/{name}", (root / name).read_bytes())
        ds = ImageTextPairDataset.from_webdataset(f"memory://{base}/ds")
        assert [s.name for s in ds.shards] == ["00000", "00001", "00002"]
        assert ds.shards[1].tar.endswith(f"{base}/ds/00001.tar")
        local = compute(ImageTextPairDataset.from_webdataset(str(root)))
        pd.testing.assert_frame_equal(compute(ds), local)
    finally:
        fs.rm(base, recursive=True)
