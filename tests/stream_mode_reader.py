"""The tar reader before issue 22 item 10: tarfile's stream mode (``"r|"``) with ``extractfile``.

Kept as the reference the fast reader (:func:`nemo_aesthetic.datasets.shards.iter_samples`) must
agree with sample for sample, on hostile tars too (``tests/test_tar_reading.py``), and as the
baseline of ``bench/host_side.py``. The grouping, refusals and errors are
``iter_samples``' own: only how the tar is opened and a member read is the old one.
"""
from __future__ import annotations

import contextlib
import tarfile

from nemo_aesthetic.datasets.shards import iter_samples
from nemo_aesthetic.datasets.tar_stream import COMPRESSED_READERS, Prefixed, StrictTarInfo


def _decompressed(raw):
    head = raw.read(6)
    stream = Prefixed(head, raw)
    for magic, reader in COMPRESSED_READERS:
        if head.startswith(magic):
            return reader(stream)
    return stream


@contextlib.contextmanager
def stream_mode_tar(fs, tar_path: str):
    """How ``iter_samples`` opened a tar before: tarfile's stream mode, members through ``extractfile``."""
    with fs.open(tar_path, "rb") as raw, _decompressed(raw) as stream, \
            tarfile.open(fileobj=stream, mode="r|", tarinfo=StrictTarInfo) as tar:
        yield tar, lambda info: tar.extractfile(info).read()


def stream_mode_samples(fs, tar_path: str, skipped: list | None = None):
    """What ``iter_samples`` yielded before: the same grouping, refusals and errors (one code path,
    :func:`~nemo_aesthetic.datasets.shards.iter_samples`), over the old way of opening the tar."""
    return iter_samples(fs, tar_path, skipped, opener=stream_mode_tar)
