"""The tar reader before issue 22 item 10: tarfile's stream mode (``"r|"``) with ``extractfile``.

Kept as the reference the fast reader (:func:`nemo_aesthetic.datasets.shards.iter_samples`) must
agree with sample for sample, on hostile tars too (``tests/test_tar_reading.py``), and as the
baseline of ``bench/tar_reading.py``.
"""
from __future__ import annotations

import lzma
import posixpath
import tarfile
import zlib

from nemo_aesthetic.datasets.shards import Sample, ShardReadError, _refusal, max_member_bytes
from nemo_aesthetic.datasets.tar_stream import COMPRESSED_READERS, Prefixed, StrictTarInfo


def _decompressed(raw):
    head = raw.read(6)
    stream = Prefixed(head, raw)
    for magic, reader in COMPRESSED_READERS:
        if head.startswith(magic):
            return reader(stream)
    return stream


def stream_mode_samples(fs, tar_path: str, skipped: list | None = None):
    """What ``iter_samples`` yielded before: the same grouping, refusals and errors."""
    from webdataset.tariterators import base_plus_ext

    limit = max_member_bytes()
    current = None
    try:
        with fs.open(tar_path, "rb") as raw, _decompressed(raw) as stream, \
                tarfile.open(fileobj=stream, mode="r|", tarinfo=StrictTarInfo) as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = base_plus_ext(info.name)
                if key is None or posixpath.basename(info.name).startswith("._"):
                    if skipped is not None:
                        skipped.append(info.name)
                    continue
                same = current is not None and current.key == key
                held = sum(len(data) for _, _, data in current.members) if same else 0
                refused = _refusal(info, limit - held)
                data = tar.extractfile(info).read() if refused is None else b""
                if not same:
                    if current is not None:
                        yield current
                    current = Sample(key, [])
                if refused is None:
                    current.members.append((ext, info, data))
                else:
                    current.refused = current.refused or refused
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError) as exc:
        if current is not None:
            current.complete = False
            yield current
        raise ShardReadError(f"cannot read {posixpath.basename(tar_path)}: {type(exc).__name__}: {exc}") from exc
    if current is not None:
        yield current
