"""The writers' re-run choices: nothing mixes two runs unless the user asks to resume."""
import os

import pandas as pd
import pytest
from factory import tar_members, write_img2dataset

from nemo_aesthetic.datasets import ImageTextPairDataset


@pytest.fixture
def dataset(tmp_path):
    write_img2dataset(tmp_path / "in", n_shards=3, rows_per_shard=8, fail_every=0)
    ds = ImageTextPairDataset.from_webdataset(str(tmp_path / "in"))
    ds.metadata["keep"] = ds.metadata["key"].str.endswith(("0", "2", "4", "6"))
    return ds


def test_to_webdataset_refuses_a_directory_that_already_has_shards(tmp_path, dataset):
    out = str(tmp_path / "out")
    dataset.to_webdataset(out, filter_column="keep", samples_per_shard=5)
    before = {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)}
    with pytest.raises(FileExistsError, match="mode='overwrite'"):
        dataset.to_webdataset(out, filter_column="keep", samples_per_shard=5)
    assert {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)} == before


def test_overwrite_replaces_every_old_shard(tmp_path, dataset):
    out = str(tmp_path / "out")
    dataset.to_webdataset(out, filter_column="keep", samples_per_shard=2)  # 12 kept -> 6 shards
    assert len([n for n in os.listdir(out) if n.endswith(".tar")]) == 6
    dataset.metadata["keep"] = dataset.metadata["key"].str.endswith("0")  # 3 kept -> 2 shards
    summary = dataset.to_webdataset(out, filter_column="keep", samples_per_shard=2, mode="overwrite")
    assert sorted(os.listdir(out)) == ["00000.parquet", "00000.tar", "00001.parquet", "00001.tar"]
    reread = ImageTextPairDataset.from_webdataset(out).metadata.compute(scheduler="sync")
    assert len(reread) == summary["written"] == 3


def test_resume_writes_only_the_missing_output_shards(tmp_path, dataset):
    out = tmp_path / "out"
    dataset.to_webdataset(str(out), filter_column="keep", samples_per_shard=5)  # 12 kept -> 3 shards
    complete = {n: (out / n).read_bytes() for n in ("00000.tar", "00000.parquet")}
    # An interrupted run: shard 00002 never written, shard 00001 got its tar but not its parquet.
    (out / "00002.tar").unlink()
    (out / "00002.parquet").unlink()
    (out / "00001.parquet").unlink()
    summary = dataset.to_webdataset(str(out), filter_column="keep", samples_per_shard=5, mode="resume")
    assert summary["skipped_shards"] == ["00000"]
    assert summary["written"] == 12 - 5
    assert {n: (out / n).read_bytes() for n in complete} == complete
    meta = ImageTextPairDataset.from_webdataset(str(out)).metadata.compute(scheduler="sync")
    samples = {name.split(".")[0] for n in ("00000", "00001", "00002")
               for name, _ in tar_members(out / f"{n}.tar")}
    assert sorted(meta["key"]) == sorted(samples) and len(meta) == 12


def test_save_metadata_resume_skips_complete_files_without_computing_them(tmp_path, dataset):
    out = tmp_path / "meta"
    dataset.save_metadata(str(out))
    (out / "00001.parquet").unlink()
    # Shard 0's file is complete; shard 2's lacks a column this run writes: both must be judged.
    pd.read_parquet(out / "00002.parquet").drop(columns=["keep"]).to_parquet(out / "00002.parquet")

    def explode(df):
        if (df["key"].str.startswith("00000")).any():
            raise AssertionError("a complete shard was computed again")
        return df

    dataset.metadata = dataset.metadata.map_partitions(explode, meta=dataset.metadata._meta)
    summary = dataset.save_metadata(str(out), mode="resume")
    assert summary == {"written": ["00001", "00002"], "skipped": ["00000"]}
    assert "keep" in pd.read_parquet(out / "00002.parquet").columns
    with pytest.raises(ValueError, match="mode"):
        dataset.save_metadata(str(out), mode="append")


def test_cli_filter_into_a_used_directory_needs_a_mode(tmp_path, dataset):
    import subprocess
    import sys

    scored = tmp_path / "in"
    df = pd.read_parquet(scored / "00000.parquet")
    for i in range(3):  # give the metadata scores, as `nemo-aesthetic score` would
        part = pd.read_parquet(scored / f"{i:05d}.parquet")
        part["aesthetic_score"] = range(len(part))
        part.to_parquet(scored / f"{i:05d}.parquet")
    assert len(df) == 8
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "nemo_aesthetic.cli", "filter", str(scored), "--threshold", "4", "--out", str(out),
           "--quiet"]
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "already holds" in again.stderr and "Traceback" not in again.stderr
    assert subprocess.run(cmd + ["--mode", "overwrite"], capture_output=True, text=True).returncode == 0
