"""What we write (issue 17): never over or instead of the input, never a truncated file published
as complete, never two runs mixed in one output, never wider permissions, no leftovers.

* ``filter DS --out DS/. --mode overwrite`` (and ``x/../DS``, a symlink to DS, fsspec URLs):
  refused, DS untouched; an overwrite that fails leaves the old output as it was;
* a disk that fills during a tar's final write (a filesystem stand-in raising ENOSPC at a
  chosen byte): an error, and no tar at the target;
* two ``filter`` runs into one ``--out`` at once (the first stopped with SIGSTOP while it writes
  its shard): the second fails at once, the output is the first's alone;
* a 0600 file stays 0600 after an in-place ``score``;
* ``.tmp-*`` files of a killed ``filter`` are gone after ``--mode resume``.
"""
from __future__ import annotations

import errno
import hashlib
import io
import tarfile
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pandas as pd
import pytest
from factory import TINY_KWARGS, TINY_MODEL, write_img2dataset
from fsspec.implementations.local import LocalFileSystem

from nemo_aesthetic import cli
from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.datasets.shard_writer import TarShardWriter
from nemo_aesthetic.datasets.shards import iter_samples

CLI = [sys.executable, "-c", "import sys; from nemo_aesthetic.cli import main; sys.exit(main())"]


def scored_dataset(root, n_shards=2, rows=5, seed=0) -> None:
    """An img2dataset-shaped dataset whose Parquet already holds aesthetic_score (failed rows null)."""
    write_img2dataset(root, n_shards=n_shards, rows_per_shard=rows, seed=seed)
    for path in sorted(root.glob("*.parquet")):
        df = pd.read_parquet(path)
        df["aesthetic_score"] = [None if s != "success" else float(i) for i, s in enumerate(df["status"])]
        df.to_parquet(path, index=False)


def snapshot(root) -> dict:
    """Every file under ``root`` (relative path -> sha256), symlinks not followed."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def temporaries(root) -> list[str]:
    return sorted(name for name in os.listdir(root) if name.startswith(".tmp-"))


# ---------------------------------------------------------------------------------- input deleted
@pytest.mark.parametrize("spelling", ["dot", "dotdot", "symlink", "file_url"])
def test_filter_over_its_own_input_in_any_spelling_is_refused_and_deletes_nothing(tmp_path, spelling, capsys):
    data = tmp_path / "DS"
    scored_dataset(data)
    (tmp_path / "sub").mkdir()
    os.symlink(data, tmp_path / "link")
    out = {"dot": f"{data}/.", "dotdot": f"{tmp_path}/sub/../DS", "symlink": str(tmp_path / "link"),
           "file_url": f"file://{data}/./"}[spelling]
    before = snapshot(data)
    assert cli.main(["filter", str(data), "--threshold=0", "--out", out, "--mode", "overwrite", "-q"]) == 2
    assert "cannot write over its own input" in capsys.readouterr().err
    assert snapshot(data) == before


def test_fsspec_urls_are_compared_normalised(tmp_path):
    import dask
    import fsspec

    memory = fsspec.filesystem("memory")
    scored_dataset(tmp_path / "DS")
    memory.put(str(tmp_path / "DS"), "/ds", recursive=True)
    # memory:// exists in this process only: compute here even when an earlier test left a
    # distributed client as the default scheduler.
    with dask.config.set(scheduler="synchronous"):
        try:
            ds = ImageTextPairDataset.from_webdataset("memory://ds")
            ds.metadata["keep"] = ds.metadata["aesthetic_score"] >= 0
            before = sorted(memory.ls("/ds", detail=False))
            for out in ("memory://ds/.", "memory://x/../ds/", "memory:///ds"):
                with pytest.raises(ValueError, match="own input"):
                    ds.to_webdataset(out, "keep", mode="overwrite")
            assert sorted(memory.ls("/ds", detail=False)) == before
            assert ds.to_webdataset("memory://ds/kept", "keep")["written"] > 0  # a sub-directory is not the input
        finally:
            memory.rm("/ds", recursive=True)


def test_an_overwrite_that_fails_leaves_the_old_output_whole(tmp_path):
    data, out = tmp_path / "DS", tmp_path / "out"
    scored_dataset(data, n_shards=3)
    ds = ImageTextPairDataset.from_webdataset(str(data))
    ds.metadata["keep"] = ds.metadata["aesthetic_score"] >= 0
    ds.to_webdataset(str(out), "keep", samples_per_shard=2)
    before = snapshot(out)
    (data / "00002.parquet").write_bytes(b"PAR1 not any more")  # breaks the next run part-way
    with pytest.raises(ValueError, match="00002.parquet"):
        ds.to_webdataset(str(out), "keep", samples_per_shard=3, mode="overwrite")
    assert snapshot(out) == before and temporaries(out) == []


# ---------------------------------------------------------------------------------- disk full
class DiskFullAt(LocalFileSystem):
    """The local filesystem, except that writes fail with ENOSPC once ``capacity`` bytes are written."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.written = capacity, 0

    def _open(self, path, mode="rb", **kwargs):
        opened = super()._open(path, mode, **kwargs)
        if "w" in mode:
            fs, write = self, opened.write

            def limited(data):
                room = fs.capacity - fs.written
                if len(data) > room:
                    write(bytes(data[:max(room, 0)]))
                    fs.written = fs.capacity
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                fs.written += len(data)
                return write(data)

            opened.write = limited
        return opened


def _write_tar(fs, path, samples) -> None:
    with TarShardWriter(fs, str(path)) as writer:
        for i, sample in enumerate(samples):
            writer.write(f"{i:09d}", sample)


def test_disk_full_during_the_tars_final_write_publishes_nothing(tmp_path):
    write_img2dataset(tmp_path / "in", n_shards=1, rows_per_shard=4, fail_every=0)
    samples = list(iter_samples(LocalFileSystem(), str(tmp_path / "in" / "00000.tar")))
    _write_tar(LocalFileSystem(), tmp_path / "whole.tar", samples)
    size = (tmp_path / "whole.tar").stat().st_size
    # every member fits; the end-of-archive blocks written by close() do not
    stand_in = DiskFullAt(size - 600)
    target = tmp_path / "out" / "00000.tar"
    with pytest.raises(OSError) as error:
        _write_tar(stand_in, target, samples)
    assert error.value.errno == errno.ENOSPC
    assert stand_in.written == stand_in.capacity  # the disk did fill
    assert not target.exists() and temporaries(tmp_path / "out") == []


def test_disk_full_mid_member_and_mid_parquet_publish_nothing(tmp_path):
    from nemo_aesthetic.datasets.resharding import write_partition as _write_partition

    write_img2dataset(tmp_path / "in", n_shards=1, rows_per_shard=4, fail_every=0)
    samples = list(iter_samples(LocalFileSystem(), str(tmp_path / "in" / "00000.tar")))
    with pytest.raises(OSError, match="No space left"):
        _write_tar(DiskFullAt(3000), tmp_path / "out" / "00000.tar", samples)
    frame = pd.read_parquet(tmp_path / "in" / "00000.parquet")
    with pytest.raises(OSError, match="No space left"):
        _write_partition(frame, str(tmp_path / "out" / "00000.parquet"), DiskFullAt(500), None)
    assert os.listdir(tmp_path / "out") == []


# ---------------------------------------------------------------------------------- concurrent runs
def _with_a_big_member(root, size=32 * 2**20) -> None:
    """Append a ``size``-byte member to the first sample of ``root/00000.tar``, so writing its output
    shard takes long enough to catch the run in the middle of it."""
    path = root / "00000.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    first = members[0][0].name.split(".", 1)[0]
    big = tarfile.TarInfo(f"{first}.bin")
    big.size = size
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
            if info.name == members[0][0].name:
                tar.addfile(big, io.BytesIO(bytes(size)))


def _caught_writing(proc, out, timeout=180) -> None:
    """Wait until ``proc`` has a temporary file in ``out`` (it is mid-write), then stop it there."""
    deadline = time.monotonic() + timeout
    while not (out.is_dir() and temporaries(out)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never started writing"
        time.sleep(0.001)
    proc.send_signal(signal.SIGSTOP)
    assert temporaries(out), "the run finished its shard before it could be stopped"


def test_two_filter_runs_into_one_out_do_not_mix(tmp_path, capsys):
    first, second, out = tmp_path / "A", tmp_path / "B", tmp_path / "out"
    scored_dataset(first, n_shards=1, rows=8, seed=1)
    _with_a_big_member(first)
    scored_dataset(second, n_shards=1, rows=6, seed=2)
    run_a = subprocess.Popen(CLI + ["filter", str(first), "--threshold=0", "--out", str(out), "-q"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _caught_writing(run_a, out)  # run A has checked --out and is writing into it
        code_b = cli.main(["filter", str(second), "--threshold=0", "--out", str(out), "--samples-per-shard", "1",
                           "-q"])
    finally:
        run_a.send_signal(signal.SIGCONT)
    a_out, a_err = run_a.communicate(timeout=300)
    assert run_a.returncode == 0, a_err
    assert code_b == 2
    assert "another run is writing to" in capsys.readouterr().err
    shards = sorted(p.name for p in out.glob("*.parquet"))
    assert shards == ["00000.parquet"]  # run A's one shard; none of run B's five
    assert len(pd.read_parquet(out / "00000.parquet")) == 6  # A's 6 downloaded rows (B has 5)
    assert not any(name.startswith((".tmp-", ".nemo_aesthetic.lock")) for name in os.listdir(out))


# ---------------------------------------------------------------------------------- modes and leftovers
def test_in_place_score_keeps_each_files_mode(tmp_path, tiny_checkpoint, aesthetic_weights):
    data = tmp_path / "DS"
    write_img2dataset(data, n_shards=2, rows_per_shard=3)
    os.chmod(data / "00000.parquet", 0o600)
    os.chmod(data / "00001.parquet", 0o640)
    assert cli.main(["score", str(data), "--cluster", "sync", "--model", TINY_MODEL, "--model-kwargs",
                     json.dumps(TINY_KWARGS), "--clip-checkpoint", tiny_checkpoint, "--aesthetic-weights",
                     aesthetic_weights, "-q"]) == 0
    assert "aesthetic_score" in pd.read_parquet(data / "00000.parquet").columns  # rewritten...
    assert stat.S_IMODE((data / "00000.parquet").stat().st_mode) == 0o600  # ...with its mode
    assert stat.S_IMODE((data / "00001.parquet").stat().st_mode) == 0o640


def test_temporaries_of_a_killed_filter_are_removed_by_resume(tmp_path):
    data, out = tmp_path / "DS", tmp_path / "out"
    scored_dataset(data, n_shards=2, rows=6)
    _with_a_big_member(data)
    run = subprocess.Popen(CLI + ["filter", str(data), "--threshold=0", "--out", str(out), "-q"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _caught_writing(run, out)
    run.send_signal(signal.SIGKILL)
    run.communicate()
    left = temporaries(out)
    assert left  # what a kill leaves behind
    assert cli.main(["filter", str(data), "--threshold=0", "--out", str(out), "--mode", "resume", "-q"]) == 0
    assert temporaries(out) == []
    assert len(pd.read_parquet(out / "00000.parquet")) == 10  # 5 downloaded rows per input shard


@pytest.mark.parametrize("nan", ["nan", "NaN", "-nan"])
def test_filter_threshold_nan_is_a_usage_error_not_an_empty_dataset(tmp_path, capsys, nan):
    scored_dataset(tmp_path / "DS", n_shards=1)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["filter", str(tmp_path / "DS"), f"--threshold={nan}", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--threshold" in err and "expected a number, got nan" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
