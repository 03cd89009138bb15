"""WebDataset shards: finding them, grouping them, reading their samples by key.

(Writing new ones: :mod:`nemo_aesthetic.datasets.shard_writer`.)

A dataset directory in img2dataset layout holds ``NNNNN.tar`` (members ``<key>.<ext>``),
``NNNNN.parquet`` (one row per URL, including failed downloads that have no tar member) and
optionally ``NNNNN_stats.json``. A tar is paired with its Parquet by shard *name*, never by its
position in a sorted list, so a missing file cannot shift every later shard onto the wrong
metadata.

Tars are read front to back, through fsspec, so any filesystem works, and memory holds one sample
at a time: tarfile parses the headers over a stream that only moves forward (:class:`ForwardOnly`;
tarfile's own stream mode ``r|`` cost 2-3x more per sample in its copy loop), and each member's
bytes are one read. Compressed shards (gzip, bzip2, xz, told by their first bytes)
are decompressed by the standard library's file readers, which bound each step's output: tarfile's
own stream decompressor would turn a few KB of a hostile ``.tar.gz`` into one huge buffer and
skip over a big member in time quadratic in its size. Nothing in a tar decides how much we hold:
a member over :func:`max_member_bytes` is not read (its sample gets a reason instead of bytes), and
sparse members, which a 2 kB tar can declare to be 8 GiB, are refused outright. Member names are split into
key and extension with webdataset's own rule (``base_plus_ext``), so keys agree with what
webdataset readers see; names it cannot split (``._*`` macOS resource forks, files without an
extension) are counted as skipped, not guessed at.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import lzma
import os
import posixpath
import re
import tarfile
import zlib
from typing import Iterator

import fsspec

from nemo_aesthetic.atomic import is_local, is_temporary
from nemo_aesthetic.datasets.tar_stream import StrictTarInfo, forward_only, member_bytes

logger = logging.getLogger(__name__)

#: Default largest tar member we read into memory; ``$NEMO_AESTHETIC_MAX_MEMBER_BYTES`` changes it.
#: An image at the default ``max_pixels`` (89 MP) is well under this even as an uncompressed TIFF.
MAX_MEMBER_BYTES = 256 * 2**20
MAX_MEMBER_ENV = "NEMO_AESTHETIC_MAX_MEMBER_BYTES"

#: What an integer id's key may look like: ASCII digits (zero padding allowed), nothing else, so
#: ``1_000``, `` 7``, ``+9`` or non-ASCII digits never match a row that ``int()`` would accept.
_CANONICAL_INT = re.compile(r"-?[0-9]+")

_SHARD_FILE = re.compile(r"^(?P<name>[^/]+?)(?P<suffix>\.parquet|\.tar|\.tar\.gz|\.tgz|_stats\.json)$")


@dataclasses.dataclass(frozen=True)
class Shard:
    """One shard of a dataset: its name (``"00042"``) and the paths of its files (None if absent)."""

    name: str
    parquet: str | None
    tar: str | None
    stats: str | None = None
    #: For a shard of another layout (a folder chunk, a Parquet with image bytes): where its
    #: images are (:class:`~nemo_aesthetic.engine.sources.Partition`); ``tar`` is then None.
    source: object = None

    def __dask_tokenize__(self):
        # Its fields, as strings: dask would otherwise pickle each of ~200,000 shards to name a graph.
        return ("Shard", self.name, self.parquet, self.tar, self.stats,
                None if self.source is None else self.source.__dask_tokenize__())


@dataclasses.dataclass
class Sample:
    """The members of one key that sit next to each other in a tar, in tar order."""

    key: str
    members: list[tuple[str, tarfile.TarInfo, bytes]]  # (extension, header, bytes)
    #: False for the sample being read when the tar broke: it may lack members that follow.
    complete: bool = True
    #: Why a member of this sample was not read (too large, sparse): the sample cannot be scored
    #: or copied, and this is its row's reason. None for a sample read in full.
    refused: str | None = None

    def extensions(self) -> list[str]:
        return [ext for ext, _, _ in self.members]


class KeyIndex:
    """Finds the metadata row of a tar key.

    Keys in tars are strings; id columns may be strings (img2dataset's zero-padded keys) or
    integers. Integer ids match the integer value of a key made of ASCII digits only
    (``"000000042"`` -> 42; ``"1_000"``, ``"+9"``, ``" 7"``, ``"١٢"`` match nothing, though
    ``int()`` accepts them). A string id matches its key exactly or, failing that, by integer value
    when both are ASCII digits (id ``"0"`` and member ``000000000.jpg``; NeMo Curator 0.x compares
    ``int()`` of both), unless two ids share that value. Null ids match nothing. Whole floats count
    as integers: an integer column with a null comes out of a Parquet without pandas metadata as
    float64 (42.0, NaN).
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
            return self.positions.get(int(tar_key)) if _CANONICAL_INT.fullmatch(tar_key) else None
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


def group_files(files: list[tuple[str, int]], per_group: int | None = None,
                blocksize: int | None = None) -> list[list[str]]:
    """The paths of ``(path, size)`` files, in order, in groups of ``per_group`` files (default 1)
    or of up to ``blocksize`` bytes (a file larger than that is a group of its own)."""
    if blocksize is None:
        step = per_group or 1
        return [[p for p, _ in files[i:i + step]] for i in range(0, len(files), step)]
    groups: list[list[str]] = []
    size = 0
    for path, n in files:
        if not groups or size + n > blocksize:
            groups.append([])
            size = 0
        groups[-1].append(path)
        size += n
    return groups


def max_member_bytes() -> int:
    """The largest tar member read into memory (``$NEMO_AESTHETIC_MAX_MEMBER_BYTES`` or 256 MiB)."""
    value = os.environ.get(MAX_MEMBER_ENV)
    if not value:
        return MAX_MEMBER_BYTES
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${MAX_MEMBER_ENV} must be a number of bytes, not {value!r}") from None


def iter_samples(fs: fsspec.AbstractFileSystem, tar_path: str, skipped: list | None = None) -> Iterator[Sample]:
    """Yield the samples of a tar in order, grouping consecutive members that share a key.

    A key that comes back later in the tar yields a second :class:`Sample`; callers decide what
    a duplicate means. Names that webdataset cannot split are appended to ``skipped``.
    A member larger than :func:`max_member_bytes`, or sparse, is skipped unread and its sample
    carries the reason in ``refused``.
    Raises :class:`ShardReadError` (after yielding what could be read) on a broken tar; the
    sample that was being read then is yielded with ``complete=False``.
    """
    # Imported here: webdataset imports torch, which the client-side reading of metadata never needs.
    from webdataset.tariterators import base_plus_ext

    limit = max_member_bytes()
    current: Sample | None = None
    try:
        with fs.open(tar_path, "rb") as raw, forward_only(raw) as stream:
            # mode "r" on a forward-only stream: tarfile parses every header (pax, GNU long names,
            # sparse maps) as in stream mode, without its 10 KiB copy loop; we read each member's
            # bytes in one call (see ForwardOnly)
            tar = tarfile.TarFile(fileobj=stream, mode="r", tarinfo=StrictTarInfo)
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
                # (a refused member is skipped, never held: a seek where the stream can, else
                # bounded reads)
                data = member_bytes(stream, info) if refused is None else b""
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
            current = None
        raise ShardReadError(f"cannot read {posixpath.basename(tar_path)}: {type(exc).__name__}: {exc}") from exc
    if current is not None:
        yield current


def _refusal(info: tarfile.TarInfo, room: int) -> str | None:
    """Why a member is not read into memory (None: read it). ``room`` is what is left of the
    limit after the sample's members already read, so one key repeated many times is bounded too."""
    if info.issparse():
        return (f"tar member {info.name} is a sparse file declaring {info.size} bytes: "
                "refused (sparse members are never read)")
    if info.size > room:
        return (f"tar member {info.name} too large: {info.size} bytes, over the limit of "
                f"{max_member_bytes()} bytes per sample (${MAX_MEMBER_ENV})")
    return None


#: Deepest nesting of a ``.json`` member we parse: deeper ones are kept as bytes, as are ones
#: json cannot parse, so no sample's metadata can exhaust the stack of whoever copies or prints it.
MAX_JSON_DEPTH = 64


def load_json_member(key: str, data: bytes):
    """A ``.json`` member parsed, or its bytes (logged) when it does not parse or nests deeper than
    :data:`MAX_JSON_DEPTH`: 200 KB of ``[`` makes ``json.loads`` raise RecursionError, which is not
    a ValueError and used to fail the whole stage pipeline."""
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError) as exc:
        logger.warning("%s: unreadable .json kept as bytes: %s", key, type(exc).__name__ if
                       isinstance(exc, RecursionError) else exc)
        return data
    if _too_deep(parsed, MAX_JSON_DEPTH):
        logger.warning("%s: .json nested deeper than %d levels kept as bytes", key, MAX_JSON_DEPTH)
        return data
    return parsed


def _too_deep(value, limit: int) -> bool:
    level = [value]
    for _ in range(limit + 1):
        level = [v for x in level if isinstance(x, (list, dict))
                 for v in (x.values() if isinstance(x, dict) else x)]
        if not level:
            return False
    return True


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
            parsed = load_json_member(sample.key, data)
            meta.update(parsed) if isinstance(parsed, dict) else meta.__setitem__("json", parsed)
        elif low == "txt":
            caption = data.decode("utf-8", errors="replace")
        else:
            meta[ext] = data
    if caption is not None:
        meta["caption"] = caption
    meta.setdefault("caption", None)
    return meta
