"""Sources: every layout a curator keeps images in, read as the same samples.

A *source* is one layout. It describes its work as :class:`Partition` s (one small picklable
spec per tar shard, Parquet file or chunk of a folder, listed lazily on the driver) and reads one
partition on a worker, two ways:

``read_rows(partition)``
    the partition's metadata rows, without the image bytes (an Arrow table): what the legacy
    front's Dask DataFrame holds and what ``score`` writes, one row per image, every row kept;
``read_items(partition, seen)``
    the partition's samples as the engine's :class:`~nemo_aesthetic.engine.ShardItem` s (key,
    image bytes, caption, the reason it cannot be read), in the same order as its rows.

That is what a ``dask.dataframe.from_map`` graph needs: the driver holds the specs, each task
reads one. The layouts (:data:`LAYOUTS`):

* ``webdataset``: img2dataset's ``NNNNN.tar`` + ``NNNNN.parquet`` (read by
  :mod:`nemo_aesthetic.datasets.shards`, the one tar reader);
* ``folder``: image files under a directory, recursively, in sorted order
  (:mod:`.folder_source`);
* ``parquet``: Parquet files with an image-bytes column, img2dataset's ``jpg``/``png``/``webp``
  or Hugging Face's ``{bytes, path}`` struct (:mod:`.parquet_source`).

:func:`detect_layout` tells them apart from the path; ``layout=`` names one.
"""
from __future__ import annotations

import dataclasses
import posixpath
import tarfile
from typing import Iterator

import fsspec

#: The layouts we read, with the line that describes each (in errors and ``--help``).
LAYOUTS = {
    "webdataset": "a directory of NNNNN.tar + NNNNN.parquet shards (img2dataset output_format=webdataset)",
    "folder": "a directory of image files (jpg, png, webp, gif, bmp, tiff), searched recursively",
    "parquet": "Parquet files with an image-bytes column (img2dataset output_format=parquet, or a "
               "Hugging Face dataset's to_parquet / hf:// export)",
}

#: Folder files per partition by default: a partition's rows and one image at a time in memory.
FILES_PER_PARTITION = 1000


class LayoutError(ValueError):
    """PATH is in none of the layouts we read, or not in the one named."""


@dataclasses.dataclass(frozen=True)
class Partition:
    """One unit of work of a source: small and picklable, read on a worker.

    Attributes:
        layout: one of :data:`LAYOUTS`.
        name: the partition's name, unique in its dataset: the stem of its output Parquet.
        path: the tar, the Parquet file, or the folder (local path or fsspec URL).
        directory: ``folder``: the directory, relative to ``path`` ("" for the top).
        start, stop: ``folder``: the slice of that directory's image files (sorted by name)...
        first, last: ``folder``: ...and the names it starts and ends with, so that a worker takes
            its files by name (a directory of a million files is listed, not sorted, per partition).
        image_column: ``parquet``: the image column (None: found from the file's schema).
    """

    layout: str
    name: str
    path: str
    directory: str = ""
    start: int = 0
    stop: int = 0
    first: str = ""
    last: str = ""
    image_column: str | None = None

    def __dask_tokenize__(self):
        # Its fields as a tuple: dask would otherwise pickle each spec to name a graph.
        return ("Partition", *dataclasses.astuple(self))


def layouts_line() -> str:
    return "; ".join(f"{name}: {what}" for name, what in LAYOUTS.items())


def detect_layout(path: str, storage_options: dict | None = None) -> str:
    """The layout of ``path``: a directory with tars is ``webdataset``; a ``.parquet`` file, or a
    directory of Parquet files with an image column, ``parquet`` (without one, they are shard
    metadata whose tars are elsewhere: ``webdataset``); a directory with image files ``folder``.
    Raises :class:`LayoutError` naming the layouts we read when none matches."""
    from nemo_aesthetic.engine.folder_source import has_image_files

    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    root = root.rstrip("/") or "/"
    if not fs.exists(root):
        raise FileNotFoundError(f"dataset path does not exist: {path}")
    if not fs.isdir(root):
        if root.lower().endswith(".parquet"):
            return "parquet"
        raise LayoutError(f"{path} is a file, not a dataset; we read {layouts_line()}")
    paths = sorted(fs.ls(root, detail=False))
    names = [posixpath.basename(p.rstrip("/")).lower() for p in paths]
    if any(n.endswith((".tar", ".tar.gz", ".tgz")) for n in names):
        return "webdataset"
    parquets = [p for p, n in zip(paths, names) if n.endswith(".parquet") and not n.startswith(".")]
    if parquets:  # image bytes in the rows, or the metadata of shards whose tars are elsewhere
        return "parquet" if _holds_images(fs, parquets[0]) else "webdataset"
    if has_parquet_below(fs, root):
        return "parquet"
    if has_image_files(fs, root):
        return "folder"
    raise LayoutError(f"{path} holds no images in a layout we read; we read {layouts_line()} "
                      "(name one with layout=/--layout)")


def _holds_images(fs, path: str) -> bool:
    """True if a Parquet file has an image column (its footer only)."""
    import pyarrow.parquet as pq

    from nemo_aesthetic.engine.parquet_source import image_column_of

    try:
        with fs.open(path, "rb") as f:
            image_column_of(pq.read_schema(f), None, path)
        return True
    except Exception:  # not readable, or no image column: shard metadata (from_webdataset says why)
        return False


def has_parquet_below(fs, root: str) -> bool:
    """True if a subdirectory holds Parquet files (Hugging Face's ``data/train-*.parquet``)."""
    for _, _, files in fs.walk(root, maxdepth=3):
        if any(str(f).lower().endswith(".parquet") for f in files):
            return True
    return False


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; we read {layouts_line()}")
    return layout


def list_partitions(path: str, layout: str, storage_options: dict | None = None, *,
                    image_column: str | None = None,
                    files_per_partition: int = FILES_PER_PARTITION) -> Iterator[Partition]:
    """The partitions of a ``folder`` or ``parquet`` source, lazily, in a stable order.

    (WebDataset shards are paired with their Parquet by
    :func:`~nemo_aesthetic.datasets.shards.discover_shards`.)"""
    from nemo_aesthetic.engine import folder_source, parquet_source

    storage_options = storage_options or {}
    if check_layout(layout) == "folder":
        return folder_source.partitions(path, storage_options, files_per_partition)
    if layout == "parquet":
        return parquet_source.partitions(path, storage_options, image_column)
    raise LayoutError("list_partitions reads folder and parquet sources; WebDataset shards are "
                      "found by discover_shards")


def read_rows(partition: Partition, storage_options: dict | None = None):
    """The partition's metadata rows (an Arrow table, no image bytes), in sample order."""
    from nemo_aesthetic.engine import folder_source, parquet_source

    module = folder_source if partition.layout == "folder" else parquet_source
    return module.read_rows(partition, storage_options or {})


def read_items(partition: Partition, storage_options: dict | None = None, seen=None, captions: bool = False):
    """The partition's samples, judged like a tar's (:class:`~nemo_aesthetic.engine.ShardItem`).
    ``captions``: also carry each sample's caption as a ``txt`` member (for writing tars)."""
    from nemo_aesthetic.engine import folder_source, parquet_source
    from nemo_aesthetic.engine.reading import SeenKeys, ShardItem, read_shard
    from nemo_aesthetic.image.preprocess import pick_image

    if partition.layout == "webdataset":
        fs, tar_path = fsspec.core.url_to_fs(partition.path, **(storage_options or {}))
        yield from read_shard(fs, tar_path, seen)
        return
    module = folder_source if partition.layout == "folder" else parquet_source
    seen = seen or SeenKeys()
    for sample in module.read_samples(partition, storage_options or {}, captions):
        ident, duplicate = seen.check(sample)
        image = None if duplicate or sample.refused else pick_image(sample.members)
        yield ShardItem(sample.key, ident, partition.path, sample, image, duplicate)


def member(ext: str, data: bytes, mtime: float = 0) -> tuple[str, tarfile.TarInfo, bytes]:
    """A sample member read from outside a tar, with the header a tar writer copies."""
    info = tarfile.TarInfo(f"member.{ext}")
    info.size, info.mode, info.mtime = len(data), 0o644, int(mtime)
    return ext, info, data


_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF8", "gif"), (b"BM", "bmp"),
          (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"))


def sniff_extension(data: bytes, fallback: str = "jpg") -> str:
    """The file extension of image bytes, from their first bytes (``fallback`` when unknown)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((ext for magic, ext in _MAGIC if data.startswith(magic)), fallback)


def shard_samples(shard, fs, storage_options: dict | None = None):
    """The samples of a dataset shard, from its tar or its source partition (with captions as
    ``txt`` members), for the readers that copy or show images (``to_webdataset``, the report)."""
    from nemo_aesthetic.datasets.shards import iter_samples

    if getattr(shard, "source", None) is not None:
        options = storage_options if storage_options is not None else getattr(fs, "storage_options", {})
        return (item.sample for item in read_items(shard.source, options, captions=True))
    return iter_samples(fs, shard.tar)
