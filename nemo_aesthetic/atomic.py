"""Atomic file writes on any fsspec filesystem.

A job killed half-way through ``save_metadata()`` over its own input directory must leave each
file either as it was or complete, never truncated. On a local (or any POSIX-like) filesystem we
write to a hidden temporary name in the same directory and ``os.replace`` it over the target,
which is atomic. Object stores (S3, GCS, ...) publish an object only when its upload completes,
so writing the target directly already has that guarantee; a temporary name plus a copy would
only double the traffic.
"""
from __future__ import annotations

import contextlib
import os
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem

TMP_PREFIX = ".tmp-"


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


@contextlib.contextmanager
def atomic_open(fs: fsspec.AbstractFileSystem, path: str, mode: str = "wb"):
    """Open ``path`` for writing so readers see the old file or the whole new one, never a part.

    On error the temporary file is removed and the target is untouched.
    """
    if not is_local(fs):
        with fs.open(path, mode) as f:
            yield f
        return
    directory, name = os.path.split(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f"{TMP_PREFIX}{name}.{uuid.uuid4().hex}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def is_temporary(name: str) -> bool:
    """True for leftovers of an interrupted atomic write (ignored when listing shards)."""
    return os.path.basename(name).startswith(TMP_PREFIX)
