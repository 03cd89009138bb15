"""WebDataset shards: finding them, reading their samples by key, writing new ones.

A dataset directory in img2dataset layout holds ``NNNNN.tar`` (members ``<key>.<ext>``),
``NNNNN.parquet`` (one row per URL, including failed downloads that have no tar member) and
optionally ``NNNNN_stats.json``. A tar is paired with its Parquet by shard *name*, never by its
position in a sorted list, so a missing file cannot shift every later shard onto the wrong
metadata.

Tars are read as a stream (``tarfile`` mode ``r|*``, through fsspec) so any filesystem works,
gzip-compressed shards work, and memory holds one sample at a time. Member names are split into
key and extension with webdataset's own rule (``base_plus_ext``), so keys agree with what
webdataset readers see; names it cannot split (``._*`` macOS resource forks, files without an
extension) are counted as skipped, not guessed at.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import posixpath
import re
import tarfile
from typing import Iterator

import fsspec

from nemo_aesthetic.atomic import atomic_open, is_local, is_temporary

logger = logging.getLogger(__name__)

_SHARD_FILE = re.compile(r"^(?P<name>[^/]+?)(?P<suffix>\.parquet|\.tar|\.tar\.gz|\.tgz|_stats\.json)$")


@dataclasses.dataclass(frozen=True)
class Shard:
    """One shard of a dataset: its name (``"00042"``) and the paths of its files (None if absent)."""

    name: str
    parquet: str | None
    tar: str | None
    stats: str | None = None


@dataclasses.dataclass
class Sample:
    """The members of one key that sit next to each other in a tar, in tar order."""

    key: str
    members: list[tuple[str, tarfile.TarInfo, bytes]]  # (extension, header, bytes)
    #: False for the sample being read when the tar broke: it may lack members that follow.
    complete: bool = True

    def extensions(self) -> list[str]:
        return [ext for ext, _, _ in self.members]


class KeyIndex:
    """Finds the metadata row of a tar key.

    Keys in tars are strings; id columns may be strings (img2dataset's zero-padded keys) or
    integers. Integer ids match the integer value of the key (``"000000042"`` -> 42). A string id
    matches its key exactly or, failing that, by integer value when both are digits (id ``"0"``
    and member ``000000000.jpg``; NeMo Curator 0.x compares ``int()`` of both), unless two ids
    share that value. Null ids match nothing. Whole floats count as integers: an integer column
    with a null comes out of a Parquet without pandas metadata as float64 (42.0, NaN).
    """

    def __init__(self, ids: list):
        ids = [int(i) if isinstance(i, float) and i.is_integer() else i for i in ids]
        present = [i for i in ids if i is not None and i == i]
        self.integer = bool(present) and all(isinstance(i, int) and not isinstance(i, bool) for i in present)
        self.positions = {i: pos for pos, i in enumerate(ids) if i is not None and i == i}
        self.by_value: dict[int, int | None] = {}
        if not self.integer:
            for pos, i in enumerate(ids):
                if isinstance(i, str) and i.isascii() and i.isdigit():
                    value = int(i)
                    self.by_value[value] = None if value in self.by_value else pos  # None: ambiguous

    def position(self, tar_key: str) -> int | None:
        if self.integer:
            try:
                return self.positions.get(int(tar_key))
            except ValueError:
                return None
        pos = self.positions.get(tar_key)
        if pos is None and self.by_value and tar_key.isascii() and tar_key.isdigit():
            pos = self.by_value.get(int(tar_key))
        return pos


class ShardReadError(Exception):
    """A tar could not be read (not a tar, truncated, unreadable). Samples before it stand."""


def discover_shards(fs: fsspec.AbstractFileSystem, root: str) -> list[Shard]:
    """All shards under ``root``, sorted by name, paired by name."""
    if not fs.exists(root):
        raise FileNotFoundError(f"dataset path does not exist: {root}")
    if not fs.isdir(root):
        raise NotADirectoryError(f"dataset path is not a directory: {root}")
    found: dict[str, dict[str, str]] = {}
    for path in fs.ls(root, detail=False):
        base = posixpath.basename(path.rstrip("/"))
        if is_temporary(base) or base.startswith("._"):
            continue
        m = _SHARD_FILE.match(base)
        if not m:
            continue
        kind = {".parquet": "parquet", "_stats.json": "stats"}.get(m["suffix"], "tar")
        # Keep the protocol (s3://...): workers re-open these paths with fsspec.
        found.setdefault(m["name"], {})[kind] = path if is_local(fs) else fs.unstrip_protocol(path)
    return [
        Shard(name, files.get("parquet"), files.get("tar"), files.get("stats"))
        for name, files in sorted(found.items())
    ]


def list_files(paths: list[str], extensions: tuple[str, ...], storage_options: dict) -> list[tuple[str, int]]:
    """``(path, size)`` of every file under ``paths`` (directories searched recursively) whose name
    ends with one of ``extensions``, in name order; temporary and ``._*`` files are left out, and
    paths given as URLs come back as URLs."""
    found = []
    for path in paths:
        fs, root = fsspec.core.url_to_fs(path, **storage_options)
        if not fs.exists(root):
            raise FileNotFoundError(f"path does not exist: {path}")
        infos = fs.find(root, detail=True) if fs.isdir(root) else {root: fs.info(root)}
        for p, info in sorted(infos.items()):
            base = posixpath.basename(p)
            if not is_temporary(base) and not base.startswith("._") and base.lower().endswith(extensions):
                found.append((fs.unstrip_protocol(p) if "://" in path else p, int(info.get("size") or 0)))
    return found


def iter_samples(fs: fsspec.AbstractFileSystem, tar_path: str, skipped: list | None = None) -> Iterator[Sample]:
    """Yield the samples of a tar in order, grouping consecutive members that share a key.

    A key that comes back later in the tar yields a second :class:`Sample`; callers decide what
    a duplicate means. Names that webdataset cannot split are appended to ``skipped``.
    Raises :class:`ShardReadError` (after yielding what could be read) on a broken tar; the
    sample that was being read then is yielded with ``complete=False``.
    """
    # Imported here: webdataset imports torch, which the client-side reading of metadata never needs.
    from webdataset.tariterators import base_plus_ext

    current: Sample | None = None
    try:
        with fs.open(tar_path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*", tarinfo=_StrictTarInfo) as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = base_plus_ext(info.name)
                if key is None or posixpath.basename(info.name).startswith("._"):
                    if skipped is not None:
                        skipped.append(info.name)
                    continue
                data = tar.extractfile(info).read()
                if current is not None and current.key == key:
                    current.members.append((ext, info, data))
                    continue
                if current is not None:
                    yield current
                current = Sample(key, [(ext, info, data)])
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if current is not None:
            current.complete = False
            yield current
            current = None
        raise ShardReadError(f"cannot read {posixpath.basename(tar_path)}: {type(exc).__name__}: {exc}") from exc
    if current is not None:
        yield current


def sample_metadata(sample: Sample, image_ext: str) -> dict:
    """A sample's caption (``.txt``, else the json's ``caption``), its ``.json`` fields, and any
    other non-image member as ``{extension: bytes}``; an unreadable ``.json`` is kept as bytes."""
    meta: dict = {}
    caption = None
    for ext, _, data in sample.members:
        low = ext.lower()
        if low == image_ext:
            continue
        if low == "json":
            try:
                parsed = json.loads(data)
            except ValueError as exc:
                logger.warning("%s: unreadable .json kept as bytes: %s", sample.key, exc)
                parsed = data
            meta.update(parsed) if isinstance(parsed, dict) else meta.__setitem__("json", parsed)
        elif low == "txt":
            caption = data.decode("utf-8", errors="replace")
        else:
            meta[ext] = data
    if caption is not None:
        meta["caption"] = caption
    meta.setdefault("caption", None)
    return meta


class _StrictTarInfo(tarfile.TarInfo):
    """Makes a cut-off or garbled member header an error wherever it is.

    ``tarfile`` raises for a bad header only at offset 0; later, a truncated or invalid header
    silently ends the archive, so a tar cut inside a header block (or overwritten in the middle)
    would read as a shorter, healthy tar. A clean end (a zero block, or EOF at a block boundary,
    which GNU tar and webdataset also accept) still ends it.
    """

    @classmethod
    def fromtarfile(cls, tarfile_):
        try:
            return super().fromtarfile(tarfile_)
        except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as exc:
            raise tarfile.SubsequentHeaderError(f"{exc} at offset {tarfile_.offset}") from None


class TarShardWriter:
    """Writes samples to a new tar, atomically (the tar appears complete or not at all).

    Member headers (mode, mtime, owner) and bytes are copied from the input unchanged; only the
    key part of the name changes.
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str):
        self._cm = atomic_open(fs, path, "wb")
        self._file = None
        self._tar: tarfile.TarFile | None = None
        self.samples = 0
        self.path = path

    def __enter__(self):
        self._file = self._cm.__enter__()
        self._tar = tarfile.open(fileobj=self._file, mode="w|", format=tarfile.PAX_FORMAT)
        return self

    def write(self, new_key: str, sample: Sample) -> None:
        for ext, info, data in sample.members:
            header = _copy_info(info, f"{new_key}.{ext}")
            header.size = len(data)
            self._tar.addfile(header, io.BytesIO(data))
        self.samples += 1

    def __exit__(self, exc_type, exc, tb):
        try:
            self._tar.close()
        finally:
            return self._cm.__exit__(exc_type, exc, tb)


def write_members(fs: fsspec.AbstractFileSystem, path: str, members: list[tuple[str, bytes]]) -> str:
    """Write ``(member name, bytes)`` pairs as a new tar, atomically; returns ``path``."""
    with atomic_open(fs, path, "wb") as f, tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_rows(fs: fsspec.AbstractFileSystem, path: str, rows: list[dict]) -> str:
    """Write dict rows as a Parquet file, atomically; an ``embedding`` column is list<float32>."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    if "embedding" in table.column_names:
        i = table.column_names.index("embedding")
        table = table.set_column(i, "embedding", table.column(i).cast(pa.list_(pa.float32())))
    with atomic_open(fs, path, "wb") as f:
        pq.write_table(table, f)
    return path


def _copy_info(info: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    new = tarfile.TarInfo(name)
    for attr in ("mode", "mtime", "uid", "gid", "uname", "gname", "type"):
        setattr(new, attr, getattr(info, attr))
    new.type = tarfile.REGTYPE
    return new
