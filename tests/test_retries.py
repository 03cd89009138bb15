"""One transient object-store error must not kill a multi-hour job: each shard's metadata read and each
shard's write is retried inside its task. A filesystem that fails the first read of every file (and
the first write of every file) with a dropped connection stands for the object store."""
from __future__ import annotations

import collections
import re

import dask
import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from nemo_aesthetic import retrying
from nemo_aesthetic.datasets import ImageTextPairDataset


class OnceFlakyFileSystem(LocalFileSystem):
    """The local disk, except that the first read and the first write of each file drop the connection."""

    protocol = ("onceflaky",)
    failures: collections.Counter = collections.Counter()

    def cat_file(self, path, *args, **kwargs):
        if ("read", path) not in self.failures:
            self.failures[("read", path)] += 1
            raise ConnectionResetError(f"connection reset while reading {path}")
        return super().cat_file(path, *args, **kwargs)

    def open(self, path, mode="rb", *args, **kwargs):
        target = re.sub(r"\.tmp-(.*)\.[0-9a-f]{32}$", r"\1", str(path))  # an atomic write's final name
        if "w" in mode and ("write", target) not in self.failures:
            self.failures[("write", target)] += 1
            raise TimeoutError(f"timed out writing {path}")
        return super().open(path, mode, *args, **kwargs)


@pytest.fixture
def flaky(monkeypatch):
    fsspec.register_implementation("onceflaky", OnceFlakyFileSystem, clobber=True)
    monkeypatch.setattr(retrying, "FIRST_DELAY", 0.01)
    OnceFlakyFileSystem.failures.clear()
    return OnceFlakyFileSystem.failures


def test_a_read_and_a_write_that_fail_once_succeed(tmp_path, flaky):
    for s in range(3):
        pq.write_table(pa.table({"key": [f"{s}{i}" for i in range(4)], "score": [float(i) for i in range(4)]}),
                       tmp_path / f"{s:05d}.parquet")
    with dask.config.set(scheduler="synchronous"):
        ds = ImageTextPairDataset.from_webdataset(f"onceflaky://{tmp_path}")
        df = ds.metadata.compute()
        summary = ds.save_metadata(f"onceflaky://{tmp_path / 'out'}")
    assert len(df) == 12 and sorted(df["key"]) == sorted(f"{s}{i}" for s in range(3) for i in range(4))
    assert sum(1 for kind, _ in flaky if kind == "read") == 3  # each shard's read failed once, then worked
    assert summary["written"] == ["00000", "00001", "00002"]
    assert sum(1 for kind, _ in flaky if kind == "write") == 3
    back = pd.concat([pd.read_parquet(tmp_path / "out" / f"{s:05d}.parquet") for s in range(3)])
    assert back["key"].tolist() == df["key"].tolist()


def test_a_missing_file_is_not_retried(tmp_path):
    calls = []

    def read():
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        retrying.with_retries(read)
    assert calls == [1]
