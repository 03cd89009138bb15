"""Hostile input files (issue 17): nothing a dataset holds may exhaust memory, start a program,
or land in the wrong row. Each test builds the attack as a real file and runs the real reader.

* a GNU sparse tar member: 2 kB on disk, 8 GiB when read -> refused, a per-row reason;
* a ``.tar.gz`` whose member inflates far past the per-sample limit -> refused, read in bounded
  memory, the samples after it still scored;
* a ``.jpg`` member holding PostScript, with a stand-in ``gs`` on PATH that records being run ->
  never run, a per-row reason;
* non-canonical integer keys (``1_000``, `` 7``, ``+9``, ``٣``, ``１２``) -> matched to no row;
* shards whose columns and types drift -> one unified schema, or a clear error before any work.
"""
from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import tarfile
import tracemalloc
import zlib

import dask
import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factory import TINY_KWARGS, TINY_MODEL, image_bytes

from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.datasets.shards import iter_samples
from nemo_aesthetic.image.classifiers import AestheticClassifier
from nemo_aesthetic.image.embedders import TimmImageEmbedder
from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage
from nemo_aesthetic.tasks.file_group import FileGroupTask

GIB = 2**30
MIB = 2**20


# ---------------------------------------------------------------------------------- builders
def sample(key: str, image: bytes, ext: str = "jpg") -> list[tuple[str, bytes]]:
    return [(f"{key}.{ext}", image), (f"{key}.txt", f"caption {key}".encode())]


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """Tar member blocks with no end-of-archive marker, so hand-made members can follow."""
    out = []
    for name, data in members:
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(data), 1_700_000_000
        out += [info.tobuf(tarfile.GNU_FORMAT), data, b"\0" * (-len(data) % 512)]
    return b"".join(out)


def end_of_tar(length: int) -> bytes:
    """Zero blocks that end a tar of ``length`` bytes at a record boundary."""
    return b"\0" * (1024 + (-(length + 1024) % tarfile.RECORDSIZE))


def gnu_sparse_member(name: str, declared: int) -> bytes:
    """An old-GNU sparse member (type ``S``) storing 512 bytes that reads back as ``declared`` bytes
    (zeros, then the stored block at the end): what ``tar --sparse`` writes for a huge empty file."""
    stored = b"\xff" * 512
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = len(stored)
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    assert len(header) == 512
    header[386:398] = tarfile.itn(declared - len(stored), 12, tarfile.GNU_FORMAT)  # sparse map: offset
    header[398:410] = tarfile.itn(len(stored), 12, tarfile.GNU_FORMAT)  # ... and size of the data
    header[482] = 0  # no extended sparse headers
    header[483:495] = tarfile.itn(declared, 12, tarfile.GNU_FORMAT)  # the file's real size
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % tarfile.calc_chksums(bytes(header))[0]
    return bytes(header) + stored


def tar_gz_with_huge_member(before: list, name: str, size: int, after: list) -> bytes:
    """A ``.tar.gz`` in which member ``name`` is ``size`` zero bytes, built without ever holding or
    compressing them: one fully-flushed deflate block of 1 MiB of zeros compresses to the same
    ~1 kB every time, so it is repeated. (A 8 GiB member makes an 8 MB file.)"""
    info = tarfile.TarInfo(name)
    info.size = size
    head = tar_bytes(before) + info.tobuf(tarfile.GNU_FORMAT)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [compressor.compress(head) + compressor.flush(zlib.Z_FULL_FLUSH)]
    zeros = b"\0" * MIB
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH) == block
    count, rest = divmod(size, MIB)
    parts.append(block * count)
    crc = zlib.crc32(head)
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    tail = b"\0" * rest + b"\0" * (-size % 512) + tar_bytes(after)
    tail += end_of_tar(len(head) + size + len(tail))
    crc = zlib.crc32(tail, crc)
    parts.append(compressor.compress(tail) + compressor.flush())
    total = len(head) + size + len(tail)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + b"".join(parts)
            + struct.pack("<II", crc & 0xFFFFFFFF, total & 0xFFFFFFFF))


def write_meta(path, keys, **columns) -> None:
    table = {"key": pa.array(keys), "caption": pa.array([f"caption {k}" for k in keys])}
    table.update(columns)
    pq.write_table(pa.table(table), path)


# ---------------------------------------------------------------------------------- running
@pytest.fixture
def score(tiny_checkpoint, aesthetic_weights):
    """``score(root, id_col)`` -> scored metadata (legacy front, synchronous), indexed by id."""

    def run(root, id_col="key"):
        embedder = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=tiny_checkpoint,
                                     batch_size=4, num_threads_per_worker=2,
                                     classifiers=[AestheticClassifier(model_path=aesthetic_weights)])
        with dask.config.set(scheduler="sync"):
            df = embedder(ImageTextPairDataset.from_webdataset(str(root), id_col=id_col)).metadata.compute()
        return df.set_index(id_col)

    return run


def stage_read(tar_path) -> tuple[list[str], dict[str, str]]:
    """The stage front's reader on one tar: (ids of the images read, {id: reason dropped})."""
    batches = ImageReaderStage(batch_size=8, num_threads=2).process(
        FileGroupTask(dataset_name="d", data=[str(tar_path)]))
    return ([im.image_id for b in batches for im in b.data], {k: r for b in batches for k, r in b.errors})


def peak_python_memory(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------------- sparse / huge members
def test_gnu_sparse_member_declaring_8_gib_is_refused_with_a_reason(tmp_path, score):
    root = tmp_path / "ds"
    root.mkdir()
    body = (tar_bytes(sample("a", image_bytes(1))) + gnu_sparse_member("b.jpg", 8 * GIB)
            + tar_bytes([("b.txt", b"caption b")] + sample("c", image_bytes(3))))
    (root / "00000.tar").write_bytes(body + end_of_tar(len(body)))
    assert (root / "00000.tar").stat().st_size <= 20 * 1024  # a tiny tar (two small JPEGs)...
    with tarfile.open(root / "00000.tar") as tar:
        assert tar.getmember("b.jpg").size == 8 * GIB and tar.getmember("b.jpg").issparse()  # ...declaring 8 GiB
    write_meta(root / "00000.parquet", ["a", "b", "c"])

    keys = []
    peak = peak_python_memory(lambda: keys.extend((s.key, s.refused) for s in iter_samples(
        fsspec.filesystem("file"), str(root / "00000.tar"))))
    assert peak < 16 * MIB, peak
    assert [k for k, _ in keys] == ["a", "b", "c"] and "sparse" in keys[1][1]

    df = score(root)
    assert df.loc[["a", "c"], "error"].isna().all()
    assert "b.jpg is a sparse file declaring 8589934592 bytes" in df.loc["b", "error"]
    assert pd.isna(df.loc["b", "aesthetic_score"])
    read, dropped = stage_read(root / "00000.tar")
    assert read == ["a", "c"] and "sparse" in dropped["b"]


def test_tar_gz_member_inflating_past_the_limit_is_refused_in_bounded_memory(tmp_path, score, monkeypatch):
    """The .tar.gz attack with a 64 MiB member against an 8 MiB limit (the same file with an 8 GiB
    member is 8 MB; this one is 70 kB and inflates in well under a second)."""
    monkeypatch.setenv("NEMO_AESTHETIC_MAX_MEMBER_BYTES", str(8 * MIB))
    root = tmp_path / "ds"
    root.mkdir()
    data = tar_gz_with_huge_member(sample("a", image_bytes(1)), "b.jpg", 64 * MIB,
                                   [("b.txt", b"caption b")] + sample("c", image_bytes(3)))
    (root / "00000.tar.gz").write_bytes(data)
    assert len(data) < 200_000
    write_meta(root / "00000.parquet", ["a", "b", "c"])

    samples = []
    peak = peak_python_memory(lambda: samples.extend(
        iter_samples(fsspec.filesystem("file"), str(root / "00000.tar.gz"))))
    assert peak < 8 * MIB, peak  # never the member, nor a big piece of it
    assert [s.key for s in samples] == ["a", "b", "c"]
    assert [s.extensions() for s in samples] == [["jpg", "txt"], ["txt"], ["jpg", "txt"]]

    df = score(root)
    assert "b.jpg too large: 67108864 bytes, over the limit of 8388608 bytes" in df.loc["b", "error"]
    assert df.loc[["a", "c"], "error"].isna().all()  # the rest of the tar is read
    read, dropped = stage_read(root / "00000.tar.gz")
    assert read == ["a", "c"] and "too large" in dropped["b"]


def test_one_key_repeated_cannot_add_up_past_the_limit(tmp_path, monkeypatch):
    """The limit is per sample: many members of one key, each under it, cannot sum past it."""
    monkeypatch.setenv("NEMO_AESTHETIC_MAX_MEMBER_BYTES", str(MIB))
    path = tmp_path / "00000.tar"
    members = [(f"a.{ext}", os.urandom(300_000)) for ext in ("jpg", "x1", "x2", "x3", "x4")]
    path.write_bytes(tar_bytes(members) + end_of_tar(len(tar_bytes(members))))
    (only,) = list(iter_samples(fsspec.filesystem("file"), str(path)))
    assert only.extensions() == ["jpg", "x1", "x2"] and "a.x3 too large" in only.refused


# ---------------------------------------------------------------------------------- PostScript
POSTSCRIPT = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 64 64
%%EndComments
newpath 0 0 moveto 64 64 lineto stroke
showpage
%%EOF
"""


def test_postscript_named_jpg_never_starts_ghostscript(tmp_path, tiny_checkpoint, aesthetic_weights):
    """A stand-in ``gs`` first on PATH records every run; scoring (the CLI, as a user runs it) and
    the report must not run it, and the row says why it was not scored."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "gs-was-run"
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\necho \"$@\" >> '{record}'\nexit 1\n")
    gs.chmod(gs.stat().st_mode | stat.S_IXUSR)
    root = tmp_path / "ds"
    root.mkdir()
    body = tar_bytes(sample("a", image_bytes(1)) + sample("b", POSTSCRIPT) + sample("c", image_bytes(3)))
    (root / "00000.tar").write_bytes(body + end_of_tar(len(body)))
    write_meta(root / "00000.parquet", ["a", "b", "c"])

    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-c", "import sys; from nemo_aesthetic.cli import main; sys.exit(main())"]
    score = subprocess.run(cmd + ["score", str(root), "--cluster", "sync", "--model", TINY_MODEL,
                                  "--model-kwargs", json.dumps(TINY_KWARGS),
                                  "--clip-checkpoint", tiny_checkpoint, "--aesthetic-weights", aesthetic_weights,
                                  "-q"], capture_output=True, text=True, env=env, timeout=300)
    assert score.returncode == 0, score.stderr
    report = subprocess.run(cmd + ["report", str(root), "--out", str(tmp_path / "r.html"), "--top", "3"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert report.returncode == 0, report.stderr
    assert not record.exists(), f"Ghostscript was started: {record.read_text()}"
    df = pd.read_parquet(root / "00000.parquet").set_index("key")
    assert "not an image PIL can read (starts with b'%!PS-Adobe-3'" in df.loc["b", "error"]
    assert df.loc[["a", "c"], "error"].isna().all()


# ---------------------------------------------------------------------------------- integer keys
def test_integer_ids_match_only_canonical_digit_keys(tmp_path, score):
    root = tmp_path / "ds"
    root.mkdir()
    lax = {"1_000": 1000, " 7": 7, "+9": 9, "\u0663": 3, "\uff11\uff12": 12}  # int() accepts them all
    assert all(int(k) == v for k, v in lax.items())
    members = [m for i, k in enumerate(lax) for m in sample(k, image_bytes(i))]
    members += sample("000000042", image_bytes(42)) + sample("-5", image_bytes(5))
    body = tar_bytes(members)
    (root / "00000.tar").write_bytes(body + end_of_tar(len(body)))
    ids = [*lax.values(), 42, -5]
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "caption": [str(i) for i in ids]}),
                   root / "00000.parquet")
    df = score(root, id_col="id")
    assert df.loc[[42, -5], "error"].isna().all()
    for value in lax.values():
        assert df.loc[value, "error"] == "no sample for this key in 00000.tar", value
        assert pd.isna(df.loc[value, "aesthetic_score"])


# ---------------------------------------------------------------------------------- schema drift
def drifting_dataset(root) -> None:
    """Three shards written at different times: a column added later, a caption column that is
    all null (so typed null) in one shard, an int32 width beside int64 ones."""
    root.mkdir()
    for shard, keys in (("00000", ["a", "b"]), ("00001", ["c"]), ("00002", ["d", "e"])):
        body = tar_bytes([m for i, k in enumerate(keys) for m in sample(k, image_bytes(ord(k)))])
        (root / f"{shard}.tar").write_bytes(body + end_of_tar(len(body)))
    pq.write_table(pa.table({"key": ["a", "b"], "caption": ["x", "y"], "width": pa.array([1, 2], pa.int64())}),
                   root / "00000.parquet")
    pq.write_table(pa.table({"key": ["c"], "caption": pa.nulls(1), "width": pa.array([3], pa.int32())}),
                   root / "00001.parquet")
    pq.write_table(pa.table({"key": ["d", "e"], "caption": ["v", "w"], "width": pa.array([4, 5], pa.int64()),
                             "license": ["cc", None]}), root / "00002.parquet")


def test_schema_drift_across_shards_is_unified_for_score_report_and_filter(tmp_path, tiny_checkpoint,
                                                                           aesthetic_weights):
    from nemo_aesthetic import cli

    root = tmp_path / "ds"
    drifting_dataset(root)
    assert cli.main(["score", str(root), "--cluster", "sync", "--model", TINY_MODEL,
                     "--model-kwargs", json.dumps(TINY_KWARGS), "--clip-checkpoint", tiny_checkpoint,
                     "--aesthetic-weights", aesthetic_weights, "-q"]) == 0
    scored = pd.concat([pd.read_parquet(p) for p in sorted(root.glob("*.parquet"))]).set_index("key")
    assert sorted(scored.index) == list("abcde") and scored["aesthetic_score"].notna().all()
    assert pd.isna(scored.loc["c", "caption"]) and pd.isna(scored.loc["a", "license"])
    assert len({pq.read_schema(p).field("license").type for p in root.glob("*.parquet")}) == 1
    assert scored.loc["d", "license"] == "cc" and list(scored["width"]) == [1, 2, 3, 4, 5]
    assert cli.main(["report", str(root), "--out", str(tmp_path / "r.html"), "--top", "2"]) == 0
    assert (tmp_path / "r.html").stat().st_size > 0
    assert cli.main(["filter", str(root), "--threshold=-1e9", "--out", str(tmp_path / "kept")]) == 0
    kept = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "kept").glob("*.parquet"))])
    assert sorted(kept["caption"].dropna()) == ["v", "w", "x", "y"] and len(kept) == 5


def test_types_with_no_common_type_are_a_clear_error_before_any_work(tmp_path, capsys):
    from nemo_aesthetic import cli

    root = tmp_path / "ds"
    drifting_dataset(root)
    pq.write_table(pa.table({"key": ["c"], "caption": pa.array([7], pa.int64())}), root / "00001.parquet")
    with pytest.raises(ValueError, match=r"column 'caption' .* string in .*00000\.parquet, int64 in .*00001\.parquet"):
        ImageTextPairDataset.from_webdataset(str(root))
    assert cli.main(["report", str(root), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "column 'caption'" in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_the_drift_reaches_the_frames_as_unified_types(tmp_path):
    root = tmp_path / "ds"
    drifting_dataset(root)
    ds = ImageTextPairDataset.from_webdataset(str(root))
    parts = [ds.metadata.get_partition(i).compute() for i in range(3)]
    assert all(list(p.columns) == ["key", "caption", "width", "license"] for p in parts)
    assert len({str(p["width"].dtype) for p in parts}) == 1
    assert str(ds.metadata.dtypes["width"]) == str(parts[1]["width"].dtype)

