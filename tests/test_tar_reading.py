"""The tar reader (issue 22 item 10): tarfile parses the headers, member bytes are read in one call.

``iter_samples`` used to read tars through tarfile's stream mode (``"r|"``), whose Python copy loop
cost ~180-650 us per sample. It now opens the tar in mode ``"r"`` over a forward-only stream. These
tests hold it to what the old reader gave (``tests/stream_mode_reader.py``, the old code kept as
the reference) on healthy and damaged tars, and to what the old one got wrong: a member declaring
a huge size hung it, and a truncated ``.tar.gz`` lost the samples of its last 10 KiB.
"""
from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
import threading

import fsspec
import pytest
from stream_mode_reader import stream_mode_samples

from nemo_aesthetic.datasets.shards import ShardReadError, iter_samples

FS = fsspec.filesystem("file")


def outcome(reader, path, timeout: float = 20.0):
    """``(samples, skipped names, error)``; each sample with every header field the writers copy.
    Fails the test if the reader takes longer than ``timeout`` seconds."""
    result: dict = {}

    def run():
        samples, skipped = [], []
        try:
            for s in reader(FS, str(path), skipped):
                samples.append((s.key, [(ext, info.name, info.size, info.mtime, info.mode, info.uname, info.type,
                                         dict(info.pax_headers), data) for ext, info, data in s.members],
                                s.complete, s.refused))
            result["value"] = (samples, skipped, None)
        except ShardReadError as exc:
            result["value"] = (samples, skipped, str(exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{reader.__name__} did not finish {path.name} in {timeout:.0f}s"
    return result["value"]


def random_tar(rng: random.Random) -> bytes:
    buf = io.BytesIO()
    fmt = rng.choice([tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT])
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for i in range(rng.randint(1, 6)):
            for ext in rng.sample(["jpg", "txt", "json", "png"], rng.randint(1, 3)):
                name = f"{i:05d}.{ext}" if rng.random() > 0.1 else "d" * 120 + f"/{i}.{ext}"  # long names
                data = rng.randbytes(rng.choice([0, 1, 511, 512, 513, 3000, 20000]))
                info = tarfile.TarInfo(name)
                info.mtime = rng.randint(0, 2**33)  # past 2**33 - 1: a pax or GNU base-256 field
                if rng.random() < 0.1:
                    info.type, info.linkname, data = tarfile.SYMTYPE, "../../etc/passwd", b""
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def damaged(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    kind = rng.choice(["whole", "truncated", "byte", "bytes", "zero block", "gzip"])
    b = bytearray(data)
    if kind == "truncated":
        del b[rng.randint(0, len(b)):]
    elif kind == "byte":
        b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == "bytes":
        for _ in range(rng.randint(2, 10)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == "zero block":
        pos = rng.randrange(len(b) // 512) * 512
        b[pos:pos + 512] = bytes(512)
    elif kind == "gzip":
        b = bytearray(gzip.compress(bytes(b), mtime=0))
    return kind, bytes(b)


def test_same_samples_headers_and_reasons_as_tarfile_stream_mode(tmp_path, monkeypatch):
    """120 random tars (ustar, GNU, pax; long names, symlinks, empty members, members over the size
    limit), whole or damaged (truncated, bytes overwritten, a block zeroed, gzipped): every sample,
    every header field, every refusal, the cut-off sample and the error equal the old reader's."""
    monkeypatch.setenv("NEMO_AESTHETIC_MAX_MEMBER_BYTES", "10000")
    rng = random.Random(22)
    seen = set()
    for n in range(120):
        kind, data = damaged(rng, random_tar(rng))
        path = tmp_path / f"{n}.tar"
        path.write_bytes(data)
        assert outcome(iter_samples, path) == outcome(stream_mode_samples, path), (n, kind)
        seen.add(kind)
    assert len(seen) == 6


def huge_size_tar(size_field: bytes) -> bytes:
    """Two samples, the first one's image declaring ``size_field`` in its header (checksum fixed)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key in ("a", "b"):
            for ext, data in (("jpg", b"\xff\xd8" + bytes(1000)), ("txt", b"caption")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    b = bytearray(buf.getvalue())
    b[124:136] = size_field
    b[148:156] = b"%06o\x00 " % tarfile.calc_chksums(bytes(b[:512]))[0]
    return bytes(b)


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.gz"])
@pytest.mark.parametrize("size_field", [b"\x80" + bytes(3) + b"\x7f" + b"\xff" * 7, b"77777777777\x00"],
                         ids=["base-256 2**67", "octal 8 GiB"])
def test_member_declaring_a_huge_size_is_refused_at_once(tmp_path, size_field, compress):
    """A 2 KB tar whose first member declares 8 GiB or 2**67 bytes: the old reader skipped it 10 KiB
    at a time, for hours (2**67: forever); now the sample gets its reason and the tar's error at once."""
    data = huge_size_tar(size_field)
    path = tmp_path / "00000.tar"
    path.write_bytes(gzip.compress(data) if compress else data)
    samples, _, error = outcome(iter_samples, path, timeout=10)
    assert [(key, complete) for key, _, complete, _ in samples] == [("a", False)]
    assert "too large" in samples[0][3] and "over the limit" in samples[0][3]
    assert error.startswith("cannot read 00000.tar")


def test_pax_record_declaring_gigabytes_is_read_in_bounded_pieces(tmp_path):
    """A pax header declaring an 8 GiB record in a 3 KB tar: tarfile asks for the whole record in one
    read, which a plain file answers by allocating 8 GiB first (MemoryError, or the worker's memory);
    the forward-only stream asks for 1 MiB at a time, so the tar is reported as damaged."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a.jpg")
        info.pax_headers = {"comment": "x"}
        info.size = 4
        tar.addfile(info, io.BytesIO(b"\xff\xd8\xff\xd9"))
    b = bytearray(buf.getvalue())
    assert b[156:157] == b"x"  # the pax extended header comes first
    b[124:136] = b"77777777777\x00"
    b[148:156] = b"%06o\x00 " % tarfile.calc_chksums(bytes(b[:512]))[0]
    path = tmp_path / "00000.tar"
    path.write_bytes(bytes(b))
    samples, _, error = outcome(iter_samples, path)
    assert samples == [] and error.startswith("cannot read 00000.tar")


def test_truncated_tar_gz_keeps_every_sample_before_the_break(tmp_path):
    """A .tar.gz cut short: every sample whose bytes arrived is read whole. The old reader read
    10 KiB ahead, so the samples in the last 10 KiB before the break were lost with it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(8):
            info = tarfile.TarInfo(f"{i:03d}.jpg")
            data = os.urandom(3000)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    whole = buf.getvalue()
    packed = gzip.compress(whole, compresslevel=0)  # stored: the cut lands where we put it
    path = tmp_path / "00000.tar.gz"
    path.write_bytes(packed[:int(len(packed) * 0.9)])
    new, _, new_error = outcome(iter_samples, path)
    old, _, old_error = outcome(stream_mode_samples, path)
    assert new_error == old_error and "EOFError" in new_error
    assert [s[2] for s in new] == [True] * (len(new) - 1) + [False]
    assert len(new) > len(old) and new[:len(old) - 1] == old[:-1]
    for key, members, _, _ in new[:-1]:
        assert members[0][-1] == whole[whole.index(members[0][-1]):][:3000]


def test_a_tar_read_from_a_pipe_gives_the_same_samples(tmp_path):
    """A stream without seek (an OS pipe; fsspec's HTTP stream is one too): members are skipped by
    reading, and the samples equal those of the same tar read from a regular file."""
    import types

    rng = random.Random(7)
    data = random_tar(rng)
    regular = tmp_path / "00000.tar"
    regular.write_bytes(data)
    fifo = tmp_path / "00000.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(data), daemon=True)
    writer.start()
    pipe_fs = types.SimpleNamespace(open=lambda path, mode: open(path, mode, buffering=0))
    samples = list(iter_samples(pipe_fs, str(fifo)))
    writer.join(5)
    expected = list(iter_samples(FS, str(regular)))
    assert [(s.key, [(e, i.name, d) for e, i, d in s.members]) for s in samples] == \
        [(s.key, [(e, i.name, d) for e, i, d in s.members]) for s in expected]
    assert len(expected) > 1
