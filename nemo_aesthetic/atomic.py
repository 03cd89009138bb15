"""Atomic file writes and exclusive outputs on any fsspec filesystem.

A job killed half-way through ``save_metadata()`` over its own input directory must leave each
file either as it was or complete, never truncated. On a local (or any POSIX-like) filesystem we
write to a hidden temporary name in the same directory and ``os.replace`` it over the target,
which is atomic; the new file keeps the mode of the file it replaces (a 0600 file stays 0600). An
error while writing (a full disk included) removes the temporary file and leaves the target as it
was. Object stores (S3, GCS, ...) publish an object only when its upload completes, so writing
the target directly already has that guarantee; on an error the upload is discarded, not
completed.

A run that writes into a directory holds :func:`exclusive_output` on it, so a second run into the
same directory fails at once instead of mixing its shards in. While it holds the lock no other
run writes there, so the temporaries it finds are leftovers of a killed run: it removes them.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import stat
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
LOCK_NAME = ".nemo_aesthetic.lock"


class OutputBusyError(FileExistsError):
    """Another run holds the output directory."""


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def temporary_name(directory: str, name: str = "") -> str:
    """A fresh hidden name in ``directory`` that shard listings and resumes ignore."""
    return posixpath.join(directory, f"{TMP_PREFIX}{name}.{uuid.uuid4().hex}" if name else
                          f"{TMP_PREFIX}{uuid.uuid4().hex}")


@contextlib.contextmanager
def atomic_open(fs: fsspec.AbstractFileSystem, path: str, mode: str = "wb", durable: bool = True):
    """Open ``path`` for writing so readers see the old file or the whole new one, never a part.

    On error the temporary file is removed (an object store's upload is discarded) and the
    target is untouched. A replaced local file keeps its permission bits. ``durable``: the data
    reaches the disk (fsync) before the rename, so a power cut cannot leave an empty file under
    the final name; intermediate files a rerun rewrites anyway (k-means' rows by cluster, a
    hundred per partition) skip it, as it was a tenth of their write time.
    """
    if not is_local(fs):
        f = fs.open(path, mode)
        try:
            yield f
        except BaseException:
            # fsspec files complete their upload on close(); discard() abandons it instead.
            discard = getattr(f, "discard", None)
            with contextlib.suppress(Exception):
                discard() if discard is not None else f.close()
            raise
        f.close()
        return
    directory, name = os.path.split(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    tmp = temporary_name(directory, name)
    try:
        with fs.open(tmp, mode) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def location(fs: fsspec.AbstractFileSystem, root: str) -> str:
    """Where ``root`` really is: symlinks, ``.`` and ``..`` resolved locally, normalised elsewhere,
    so two spellings of one directory compare equal."""
    if is_local(fs):
        return os.path.realpath(root)
    return fs.unstrip_protocol(posixpath.normpath(fs._strip_protocol(root)))


def commit_staged(fs: fsspec.AbstractFileSystem, staging: str, root: str, replaced: list[str]) -> None:
    """Move the complete new output from directory ``staging`` into ``root``, then delete the old
    files of ``replaced`` that no new file took the place of.

    Nothing old is removed before everything new exists. Each move is a rename locally (a copy
    on object stores); ``.parquet`` files move after the others, so a shard's Parquet, which
    marks it finished for a resume, never arrives before its tar.
    """
    new = fs.ls(staging, detail=False) if fs.exists(staging) else []  # (nothing kept: nothing staged)
    names = {posixpath.basename(p.rstrip("/")) for p in new}
    for path in sorted(new, key=lambda p: p.endswith(".parquet")):
        fs.mv(path, posixpath.join(root, posixpath.basename(path.rstrip("/"))))
    old = [p for p in replaced if posixpath.basename(p) not in names]
    if old:
        fs.rm(old)
    if new:
        fs.rm(staging, recursive=True)


def is_temporary(name: str) -> bool:
    """True for leftovers of an interrupted atomic write (ignored when listing shards)."""
    return os.path.basename(name).startswith(TMP_PREFIX)


@contextlib.contextmanager
def exclusive_output(fs: fsspec.AbstractFileSystem, root: str):
    """Hold ``root`` (created if needed) for one run; :class:`OutputBusyError` if another run does.

    Locally this is an ``flock`` on ``root/.nemo_aesthetic.lock``, which the kernel drops when the
    process dies, so a killed run never leaves the directory locked; the file is removed on
    release. Then the temporaries in ``root`` (files and staging directories named ``.tmp-*``) are
    leftovers of killed runs and are removed. Object stores have no such lock: there this only
    creates ``root``, and concurrent runs into one prefix are not detected.
    """
    fs.makedirs(root, exist_ok=True)
    if not is_local(fs):
        yield
        return
    import fcntl

    lock_path = os.path.join(root, LOCK_NAME)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise OutputBusyError(f"another run is writing to {root} (it holds {lock_path}); wait for it "
                                  "to finish, or choose another output") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # locked a lock file that its holder removed as we opened it: take the new one
    try:
        remove_stale_temporaries(root)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock_path)
        os.close(fd)


def remove_stale_temporaries(root: str) -> int:
    """Remove the ``.tmp-*`` files and directories directly under local ``root``; returns how many.

    Call only while holding :func:`exclusive_output` on ``root``.
    """
    import shutil

    removed = 0
    for entry in os.scandir(root):
        if not is_temporary(entry.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.remove(entry.path)
            removed += 1
    if removed:
        logger.info("removed %d temporary file(s) left in %s by an interrupted run", removed, root)
    return removed
