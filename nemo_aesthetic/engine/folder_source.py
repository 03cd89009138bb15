"""The ``folder`` source: image files under a directory, recursively, in a stable sorted order.

The driver walks the tree one directory at a time and keeps one small spec per partition: a
partition is ``(directory, first name, last name)``, a run of that directory's image files sorted
by name, so a folder of a million files is never one list on the driver. The worker lists its
directory again and reads the files in its run.

Every file whose name ends in an image extension (:data:`FOLDER_EXTENSIONS`, any case) is a row;
a file next to it with the same stem and ``.txt`` is its caption. Each row's key is its path
relative to the folder (``sub/cat.jpg``), which leads back to the image. Nothing outside the
folder is read: directories reached through symlinks are not entered, and a file symlink whose
target lies outside the folder, loops or dangles keeps its row with the reason; so do a file that
is not a regular file (a FIFO named ``x.jpg`` is never opened), one that cannot be read, and one
over :func:`~nemo_aesthetic.datasets.shards.max_member_bytes`. Hidden files and directories
(``.name``) and our temporary files are left out.
"""
from __future__ import annotations

import os
import posixpath
import stat
from typing import Iterator

import fsspec
import pyarrow as pa

from nemo_aesthetic.atomic import is_local, is_temporary
from nemo_aesthetic.datasets.shards import Sample, max_member_bytes
from nemo_aesthetic.engine.sources import Partition, member
from nemo_aesthetic.image.preprocess import IMAGE_EXTENSIONS

#: The file extensions that make a file a row (lower case; matched case-insensitively).
FOLDER_EXTENSIONS = tuple(IMAGE_EXTENSIONS)

#: Longest caption file read (a bigger ``.txt`` is not a caption).
MAX_CAPTION_BYTES = 1 << 20

ROW_SCHEMA = pa.schema([("key", pa.string()), ("path", pa.string()), ("caption", pa.string())])


def is_image_name(name: str) -> bool:
    return (not name.startswith(".") and not is_temporary(name)
            and posixpath.splitext(name)[1][1:].lower() in FOLDER_EXTENSIONS)


def _walk(fs, root: str) -> Iterator[tuple[str, list[str]]]:
    """``(directory relative to root, its file names)``, depth first in sorted order; symlinked
    and hidden directories are not entered."""
    if is_local(fs):
        for directory, dirs, files in os.walk(root, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            yield posixpath.relpath(directory, root).replace(os.sep, "/").removeprefix("."), files
        return
    for directory, dirs, files in fs.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = posixpath.relpath(directory.rstrip("/"), root.rstrip("/"))
        yield ("" if rel == "." else rel), [posixpath.basename(str(f)) for f in files]


def has_image_files(fs, root: str) -> bool:
    return any(any(is_image_name(n) for n in names) for _, names in _walk(fs, root))


def partitions(path: str, storage_options: dict, per_partition: int) -> Iterator[Partition]:
    if per_partition < 1:
        raise ValueError("files_per_partition must be >= 1")
    fs, root = fsspec.core.url_to_fs(path, **storage_options)
    root = root.rstrip("/") or "/"
    if not fs.isdir(root):
        raise NotADirectoryError(f"folder source is not a directory: {path}")
    index = 0
    for directory, names in _walk(fs, root):
        names = sorted(filter(is_image_name, names))
        for start in range(0, len(names), per_partition):
            stop = min(len(names), start + per_partition)
            yield Partition("folder", f"{index:05d}", path, directory=directory, start=start, stop=stop,
                            first=names[start], last=names[stop - 1])
            index += 1


def _files(partition: Partition, storage_options: dict):
    """``(fs, root, directory path, [image file names of this partition])``."""
    fs, root = fsspec.core.url_to_fs(partition.path, **storage_options)
    root = root.rstrip("/") or "/"
    directory = posixpath.join(root, partition.directory) if partition.directory else root
    if is_local(fs):
        names = os.listdir(directory)
    else:
        names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(directory, detail=False)
                 if not fs.isdir(p)]
    mine = sorted(n for n in names if partition.first <= n <= partition.last and is_image_name(n))
    return fs, root, directory, mine


def _url(fs, path: str) -> str:
    return path if is_local(fs) else fs.unstrip_protocol(path)


def read_rows(partition: Partition, storage_options: dict) -> pa.Table:
    fs, root, directory, names = _files(partition, storage_options)
    keys = [posixpath.join(partition.directory, n) if partition.directory else n for n in names]
    paths = [_url(fs, posixpath.join(directory, n)) for n in names]
    captions = [_caption(fs, root, directory, n) for n in names]
    return pa.table([keys, paths, captions], schema=ROW_SCHEMA)


def read_samples(partition: Partition, storage_options: dict, captions: bool) -> Iterator[Sample]:
    fs, root, directory, names = _files(partition, storage_options)
    limit = max_member_bytes()
    for name in names:
        key = posixpath.join(partition.directory, name) if partition.directory else name
        path = posixpath.join(directory, name)
        ext = posixpath.splitext(name)[1][1:]
        data, mtime, refused = _read(fs, root, path, limit)
        sample = Sample(key, [] if refused else [member(ext, data, mtime)], refused=refused)
        caption = _caption(fs, root, directory, name) if captions and not refused else None
        if caption is not None:
            sample.members.append(member("txt", caption.encode("utf-8"), mtime))
        yield sample


def _read(fs, root: str, path: str, limit: int) -> tuple[bytes, float, str | None]:
    """``(bytes, mtime, None)`` or ``(b"", 0, why the file is not read)``."""
    if not is_local(fs):
        try:
            size = int(fs.size(path) or 0)
            if size > limit:
                return b"", 0, f"file too large: {size} bytes, over the limit of {limit} bytes"
            return fs.cat_file(path), 0, None
        except OSError as exc:
            return b"", 0, f"cannot read file: {type(exc).__name__}: {exc}"
    problem = _outside(root, path)
    if problem:
        return b"", 0, problem
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return b"", 0, "not a regular file (not read)"
        if info.st_size > limit:
            return b"", 0, f"file too large: {info.st_size} bytes, over the limit of {limit} bytes"
        with open(path, "rb") as f:
            return f.read(limit + 1), info.st_mtime, None
    except OSError as exc:
        return b"", 0, f"cannot read file: {type(exc).__name__}: {exc.strerror or exc}"


def _outside(root: str, path: str) -> str | None:
    """Why a local file symlink is not followed (None: a plain file, or a link inside the folder)."""
    if not os.path.islink(path):
        return None
    try:
        target = os.path.realpath(path, strict=True)
    except (OSError, RuntimeError) as exc:
        return f"symlink that loops or dangles (not followed): {type(exc).__name__}"
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, target]) != real_root:
        return "symlink to a file outside the folder (not followed)"
    return None


def _caption(fs, root: str, directory: str, name: str) -> str | None:
    path = posixpath.join(directory, posixpath.splitext(name)[0] + ".txt")
    try:
        if is_local(fs):
            if _outside(root, path) or not os.path.isfile(path) or os.path.getsize(path) > MAX_CAPTION_BYTES:
                return None
            with open(path, "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        if not fs.isfile(path) or (fs.size(path) or 0) > MAX_CAPTION_BYTES:
            return None
        return fs.cat_file(path).decode("utf-8", errors="replace")
    except OSError:
        return None
