"""ImageTextPairDataset.to_webdataset: filter, reshard, renumber, copy members byte for byte.

Real tars in, real tars out. The output is checked against the input files, never against the
implementation: every kept sample must come out with all its members unchanged, every output
Parquet row must have exactly one tar sample with the same id, and the ids must follow the
legacy scheme ``shard * 10**ceil(log10(samples_per_shard)) + index``.
"""
from __future__ import annotations

import math
import os
import tarfile
import uuid

import dask
import fsspec
import pandas as pd
import pytest

from factory import add_member, image_bytes, tar_members, write_img2dataset
from nemo_aesthetic.datasets import ImageTextPairDataset


# ---------------------------------------------------------------- helpers
def write_shards(root, shards: dict[str, list[tuple[str, dict[str, bytes] | None]]], id_col="key") -> None:
    """Write ``{name}.tar`` + ``{name}.parquet``; a sample whose members are None is a failed row."""
    os.makedirs(root, exist_ok=True)
    for name, samples in shards.items():
        rows = []
        with tarfile.open(os.path.join(root, f"{name}.tar"), "w") as tar:
            for key, members in samples:
                rows.append({id_col: key, "caption": f"caption of {key}",
                             "status": "success" if members else "failed_to_download"})
                for ext, data in (members or {}).items():
                    add_member(tar, f"{key}.{ext}", data)
        pd.DataFrame(rows).to_parquet(os.path.join(root, f"{name}.parquet"), index=False)


def samples_of(tar_path) -> dict[str, dict[str, bytes]]:
    """``{key: {ext: bytes}}`` of a tar, asserting each key's members are contiguous and unique."""
    out: dict[str, dict[str, bytes]] = {}
    order = []
    for name, data in tar_members(tar_path):
        key, ext = name.split(".", 1)
        if not order or order[-1] != key:
            assert key not in out, f"{key} appears twice (not contiguous) in {tar_path}"
            order.append(key)
            out[key] = {}
        assert ext not in out[key], f"duplicate member {name} in {tar_path}"
        out[key][ext] = data
    return out


def input_samples(root) -> dict[str, dict[str, bytes]]:
    out = {}
    for name in sorted(os.listdir(root)):
        if name.endswith(".tar"):
            out.update(samples_of(os.path.join(root, name)))
    return out


def expected_id(shard: int, index: int, sps: int, max_shards: int) -> str:
    digits = math.ceil(math.log10(sps))
    return f"{shard * 10 ** digits + index:0{max_shards + digits}d}"


def check_output(out, sps, max_shards, old_id_col="old_key", id_col="key"):
    """Check the invariants every output must hold; returns ({old id: new id}, tar samples, frames)."""
    names = sorted(os.listdir(out))
    assert not [n for n in names if n.startswith(".tmp-")]
    n_shards = len(names) // 2
    assert names == sorted([f"{j:0{max_shards}d}.tar" for j in range(n_shards)]
                           + [f"{j:0{max_shards}d}.parquet" for j in range(n_shards)])
    mapping, samples, frames_ = {}, {}, []
    for j in range(n_shards):
        meta = pd.read_parquet(os.path.join(out, f"{j:0{max_shards}d}.parquet"))
        tar = samples_of(os.path.join(out, f"{j:0{max_shards}d}.tar"))
        assert len(meta) <= sps
        ids = meta[id_col].tolist()
        assert sorted(ids) == [expected_id(j, k, sps, max_shards) for k in range(len(meta))]
        assert sorted(tar) == sorted(ids)  # parquet rows and tar samples one to one, by id
        if old_id_col:
            for old, new in zip(meta[old_id_col], meta[id_col]):
                assert old not in mapping, f"{old} written twice"
                mapping[old] = new
        samples.update(tar)
        frames_.append(meta)
    return mapping, samples, frames_


@pytest.fixture(autouse=True)
def _sync_scheduler(request):
    if "cpu_client" in request.fixturenames:
        yield
        return
    with dask.config.set(scheduler="sync"):
        yield


def keep_some(df: pd.DataFrame) -> pd.DataFrame:
    """keep = success, except index 2 (False) and index 5 (null: not kept)."""
    idx = df["key"].str[-4:].astype(int)
    keep = pd.array((df["status"] == "success").tolist(), dtype="boolean")
    keep[(idx == 2).to_numpy()] = False
    keep[(idx == 5).to_numpy()] = pd.NA
    return df.assign(keep=keep)


def with_keep(ds):
    meta = ds.metadata._meta.assign(keep=pd.array([], dtype="boolean"))
    ds.metadata = ds.metadata.map_partitions(keep_some, meta=meta)
    return ds


# ---------------------------------------------------------------- behaviour
def test_filters_reshards_renumbers_and_copies_bytes(img2dataset_dir, tmp_path):
    root, expected = img2dataset_dir
    ds = with_keep(ImageTextPairDataset.from_webdataset(str(root)))
    want_kept = {k for k, v in expected.items()
                 if v["status"] == "success" and int(k[-4:]) not in (2, 5)}
    assert len(want_kept) == 18

    out = tmp_path / "out"
    summary = ds.to_webdataset(str(out), "keep", samples_per_shard=4, old_id_col="old_key")

    assert summary == {"kept_rows": 18, "written": 18, "shards": 5, "skipped_shards": [], "missing": []}
    mapping, samples, metas = check_output(out, sps=4, max_shards=5)
    assert [len(m) for m in metas] == [4, 4, 4, 4, 2]
    assert set(mapping) == want_kept  # nulls in the filter column are not kept
    source = input_samples(root)
    for old, new in mapping.items():
        assert samples[new] == source[old]  # every member, byte for byte
        assert samples[new]["jpg"] == expected[old]["image"]

    # the output opens again and carries the kept metadata
    again = ImageTextPairDataset.from_webdataset(str(out)).metadata.compute()
    src = ds.metadata.compute()
    src = src[src["keep"].fillna(False)].set_index("key").sort_index()
    got = again.set_index("old_key").sort_index()
    assert list(got.index) == list(src.index)
    for col in ("url", "caption", "status", "width", "height", "keep"):
        assert got[col].tolist() == src[col].tolist(), col
    assert list(got["key"]) == [mapping[k] for k in got.index]


@pytest.mark.parametrize("sps,max_shards", [(10000, 5), (10, 5), (3, 2), (1, 3)])
def test_id_scheme_and_shard_names(img2dataset_dir, tmp_path, sps, max_shards):
    root, expected = img2dataset_dir
    ds = ImageTextPairDataset.from_webdataset(str(root))
    ds.metadata["ok"] = ds.metadata["status"] == "success"
    out = tmp_path / "out"
    summary = ds.to_webdataset(str(out), "ok", samples_per_shard=sps, max_shards=max_shards,
                               old_id_col="old_key")
    assert summary["written"] == summary["kept_rows"] == 24
    assert summary["shards"] == math.ceil(24 / sps)
    mapping, samples, metas = check_output(out, sps, max_shards)
    assert len(mapping) == 24
    source = input_samples(root)
    assert all(samples[new] == source[old] for old, new in mapping.items())


def test_without_old_id_col_the_old_ids_are_not_written(img2dataset_dir, tmp_path):
    root, _ = img2dataset_dir
    ds = ImageTextPairDataset.from_webdataset(str(root))
    ds.metadata["ok"] = ds.metadata["status"] == "success"
    ds.to_webdataset(str(tmp_path / "out"), "ok", samples_per_shard=100)
    meta = pd.read_parquet(tmp_path / "out" / "00000.parquet")
    assert list(meta.columns) == list(ds.metadata.columns)
    assert meta["key"].tolist() == [expected_id(0, k, 100, 5) for k in range(24)]


def test_every_member_extension_is_copied(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    samples = {}
    for i in range(6):
        key = f"00000{i:04d}"
        samples[key] = {"jpg": image_bytes(i), "txt": f"caption {i}".encode(), "json": b'{"k": %d}' % i,
                        "cls": str(i % 3).encode(), "seg.png": image_bytes(100 + i, (16, 16), fmt="PNG")}
    samples["000000006"] = None  # a failed download
    write_shards(src, {"00000": list(samples.items())})
    ds = ImageTextPairDataset.from_webdataset(str(src))
    ds.metadata["keep"] = ds.metadata["key"] != "000000003"

    summary = ds.to_webdataset(str(out), "keep", samples_per_shard=2, old_id_col="orig")
    assert summary["kept_rows"] == 6 and summary["written"] == 5
    assert summary["missing"] == [("00000", "000000006")]
    mapping, written, _ = check_output(out, 2, 5, old_id_col="orig")
    assert set(mapping) == {k for k, v in samples.items() if v and k != "000000003"}
    for old, new in mapping.items():
        assert written[new] == samples[old]
        assert set(written[new]) == {"jpg", "txt", "json", "cls", "seg.png"}
    # member headers keep their mtime
    with tarfile.open(out / "00000.tar") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1_700_000_000}


def test_non_integer_keys(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    shards = {
        "00000": [("abc_1", {"jpg": image_bytes(1), "txt": b"one"}), ("abc_2", {"jpg": image_bytes(2)}),
                  ("zz-9", {"jpg": image_bytes(3), "txt": b"three"})],
        "00001": [("abc_10", {"jpg": image_bytes(4)}), ("q", None)],
    }
    write_shards(src, shards)
    ds = ImageTextPairDataset.from_webdataset(str(src))
    ds.metadata["keep"] = ds.metadata["key"] != "abc_2"
    summary = ds.to_webdataset(str(out), "keep", samples_per_shard=2, old_id_col="old")
    assert summary["kept_rows"] == 4 and summary["written"] == 3
    assert summary["missing"] == [("00001", "q")]
    mapping, written, _ = check_output(out, 2, 5, old_id_col="old")
    source = {k: v for s in shards.values() for k, v in s if v}
    assert set(mapping) == {"abc_1", "zz-9", "abc_10"}
    for old, new in mapping.items():
        assert written[new] == source[old]


def test_integer_id_column_matches_zero_padded_tar_keys(img2dataset_dir, tmp_path):
    root, expected = img2dataset_dir
    for shard in ("00000", "00001", "00002"):
        df = pd.read_parquet(root / f"{shard}.parquet")
        df.assign(key=df["key"].astype("int64")).to_parquet(root / f"{shard}.parquet", index=False)
    ds = ImageTextPairDataset.from_webdataset(str(root))
    ds.metadata["ok"] = ds.metadata["status"] == "success"
    summary = ds.to_webdataset(str(tmp_path / "out"), "ok", samples_per_shard=10, old_id_col="old")
    assert summary["written"] == 24 and summary["missing"] == []
    mapping, written, _ = check_output(tmp_path / "out", 10, 5, old_id_col="old")
    for old, new in mapping.items():
        assert written[new]["jpg"] == expected[f"{old:09d}"]["image"]


def test_shards_filtered_to_nothing(img2dataset_dir, tmp_path):
    root, expected = img2dataset_dir
    ds = ImageTextPairDataset.from_webdataset(str(root))
    ds.metadata["keep"] = (ds.metadata["status"] == "success") & (ds.metadata["key"].str[:5] != "00001")
    summary = ds.to_webdataset(str(tmp_path / "out"), "keep", samples_per_shard=5, old_id_col="old_key")
    assert summary == {"kept_rows": 16, "written": 16, "shards": 4, "skipped_shards": [], "missing": []}
    mapping, written, metas = check_output(tmp_path / "out", 5, 5)
    assert [len(m) for m in metas] == [5, 5, 5, 1]
    assert {k[:5] for k in mapping} == {"00000", "00002"}
    for old, new in mapping.items():
        assert written[new]["jpg"] == expected[old]["image"]


def test_whole_dataset_filtered_to_nothing_writes_no_empty_tar(img2dataset_dir, tmp_path, caplog):
    root, _ = img2dataset_dir
    ds = ImageTextPairDataset.from_webdataset(str(root))
    ds.metadata["keep"] = ds.metadata["status"] == "nothing has this status"
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="nemo_aesthetic"):
        summary = ds.to_webdataset(str(out), "keep", old_id_col="old_key")
    assert summary == {"kept_rows": 0, "written": 0, "shards": 0, "skipped_shards": [], "missing": []}
    assert os.listdir(out) == []
    assert "no row is kept; nothing written" in caplog.text


@pytest.mark.parametrize("spelling", ["same", "slash", "file_url"])
def test_refuses_to_write_over_its_input(img2dataset_dir, spelling):
    root, _ = img2dataset_dir
    before = {n: (root / n).read_bytes() for n in os.listdir(root)}
    ds = ImageTextPairDataset.from_webdataset(str(root))
    ds.metadata["ok"] = ds.metadata["status"] == "success"
    target = {"same": str(root), "slash": f"{root}/", "file_url": f"file://{root}"}[spelling]
    with pytest.raises(ValueError, match="input"):
        ds.to_webdataset(target, "ok")
    assert {n: (root / n).read_bytes() for n in os.listdir(root)} == before


def test_kept_rows_without_a_sample_are_listed_as_missing(img2dataset_dir, tmp_path):
    root, expected = img2dataset_dir
    os.remove(root / "00001.tar")
    ds = ImageTextPairDataset.from_webdataset(str(root))
    ds.metadata["all"] = ~ds.metadata["status"].isna()
    summary = ds.to_webdataset(str(tmp_path / "out"), "all", samples_per_shard=7, old_id_col="old_key")

    failed = {(v["shard"], k) for k, v in expected.items() if v["status"] != "success"}
    no_tar = {("00001", k) for k, v in expected.items() if v["shard"] == "00001"}
    assert summary["kept_rows"] == 30
    assert set(summary["missing"]) == failed | no_tar
    assert len(summary["missing"]) == len(set(summary["missing"]))
    assert summary["written"] == 30 - len(failed | no_tar) == 16
    mapping, written, _ = check_output(tmp_path / "out", 7, 5)
    assert set(mapping) == {k for k, v in expected.items() if v["status"] == "success" and v["shard"] != "00001"}


def test_truncated_tar_writes_only_whole_samples_and_lists_the_rest(img2dataset_dir, tmp_path):
    root, expected = img2dataset_dir
    source = input_samples(root)
    path = root / "00001.tar"
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    first, second = members[0].name.split(".")[0], members[3].name.split(".")[0]
    assert [m.name for m in members[:5]] == [f"{first}.jpg", f"{first}.txt", f"{first}.json",
                                             f"{second}.jpg", f"{second}.txt"]
    # cut inside the .txt of the second sample: its .jpg reads, its .txt and .json do not
    path.write_bytes(path.read_bytes()[: members[4].offset_data + 1])

    ds = ImageTextPairDataset.from_webdataset(str(root))
    ds.metadata["ok"] = ds.metadata["status"] == "success"
    summary = ds.to_webdataset(str(tmp_path / "out"), "ok", samples_per_shard=100, old_id_col="old_key")

    shard1 = {k for k, v in expected.items() if v["shard"] == "00001" and v["status"] == "success"}
    assert summary["kept_rows"] == 24
    assert set(summary["missing"]) == {("00001", k) for k in shard1 - {first}}  # the cut sample too
    assert summary["written"] == 17
    mapping, written, _ = check_output(tmp_path / "out", 100, 5)
    assert set(mapping) == {k for k, v in expected.items() if v["status"] == "success"} - shard1 | {first}
    for old, new in mapping.items():
        assert written[new] == source[old]  # no sample is written with members missing


def test_bad_arguments(img2dataset_dir, tmp_path):
    root, _ = img2dataset_dir
    ds = ImageTextPairDataset.from_webdataset(str(root))
    with pytest.raises(KeyError, match="status"):  # the message lists the columns
        ds.to_webdataset(str(tmp_path / "a"), "no_such_column")
    ds.metadata["ok"] = ds.metadata["status"] == "success"
    with pytest.raises(ValueError, match="samples_per_shard"):
        ds.to_webdataset(str(tmp_path / "b"), "ok", samples_per_shard=0)


def test_output_to_memory_filesystem(img2dataset_dir):
    root, expected = img2dataset_dir
    ds = ImageTextPairDataset.from_webdataset(str(root))
    ds.metadata["ok"] = ds.metadata["status"] == "success"
    fs = fsspec.filesystem("memory")
    base = f"/nemo-aesthetic-test-{uuid.uuid4().hex}"
    try:
        summary = ds.to_webdataset(f"memory://{base}/out", "ok", samples_per_shard=20, old_id_col="old_key")
        assert summary["written"] == 24 and summary["shards"] == 2
        again = ImageTextPairDataset.from_webdataset(f"memory://{base}/out").metadata.compute()
        assert sorted(again["old_key"]) == sorted(k for k, v in expected.items() if v["status"] == "success")
        with fs.open(f"{base}/out/00001.tar", "rb") as f:
            with tarfile.open(fileobj=f) as tar:
                names = [m.name for m in tar]
        assert len(names) == 4 * 3 and all(n.startswith("000010") for n in names)
    finally:
        fs.rm(base, recursive=True)


def test_on_a_local_cluster_matches_the_sync_result(cpu_client, tmp_path):
    from distributed import get_task_stream

    root = tmp_path / "dataset"
    expected = write_img2dataset(root, n_shards=3, rows_per_shard=10)

    def run(out, scheduler):
        ds = with_keep(ImageTextPairDataset.from_webdataset(str(root)))
        with dask.config.set(scheduler=scheduler):
            return ds.to_webdataset(str(out), "keep", samples_per_shard=4, old_id_col="old_key")

    with get_task_stream(cpu_client) as ts:
        on_cluster = run(tmp_path / "cluster", "dask.distributed")
    assert any("write-output-shard" in str(t["key"]) for t in ts.data), "did not run on the cluster"
    local = run(tmp_path / "sync", "sync")
    assert on_cluster == local == {"kept_rows": 18, "written": 18, "shards": 5, "skipped_shards": [], "missing": []}

    mapping, samples, _ = check_output(tmp_path / "cluster", 4, 5)
    for old, new in mapping.items():
        assert samples[new]["jpg"] == expected[old]["image"]
    for j in range(5):
        assert tar_members(tmp_path / "cluster" / f"{j:05d}.tar") == tar_members(tmp_path / "sync" / f"{j:05d}.tar")
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cluster" / f"{j:05d}.parquet"),
                                      pd.read_parquet(tmp_path / "sync" / f"{j:05d}.parquet"))
