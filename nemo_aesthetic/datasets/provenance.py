"""Where a metadata Parquet came from, recorded in its own key-value metadata.

``save_metadata(path)`` can write a dataset's metadata away from its tars (``nemo-aesthetic score
DS --out DIR``). Each file it writes records the directory of the tars it describes under
:data:`SOURCE_KEY` (an absolute path or fsspec URL), so ``from_webdataset(DIR)`` finds the images
again and ``report`` and ``filter`` work on DIR as on DS. Callers can add their own keys
(``save_metadata(file_metadata=...)``); the CLI records the model under :data:`MODEL_KEY` and,
for ``--tiny``'s random model, :data:`TINY_KEY`, so every later reader can say so.
"""
from __future__ import annotations

import dataclasses
import logging
import posixpath

import fsspec
import pyarrow.parquet as pq

from nemo_aesthetic.atomic import is_local

logger = logging.getLogger(__name__)

SOURCE_KEY = "nemo_aesthetic.source"
#: The layout of the images at SOURCE_KEY when it is not WebDataset shards ("folder", "parquet"),
#: and the Parquet image column named when the dataset was opened.
LAYOUT_KEY = "nemo_aesthetic.layout"
IMAGE_COLUMN_KEY = "nemo_aesthetic.image_column"
MODEL_KEY = "nemo_aesthetic.model"
TINY_KEY = "nemo_aesthetic.tiny"


def source_of(fs, tar_files) -> str | None:
    """The directory of the first tar, as a URL another process can open (None without tars)."""
    tar = next((t for t in tar_files if t is not None), None)
    if tar is None:
        return None
    directory = posixpath.dirname(tar)
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return directory if "file" in protocols else fs.unstrip_protocol(directory)


def source_metadata(dataset, fs) -> dict[str, str]:
    """What a written metadata file records about where its images are."""
    if dataset.layout == "webdataset":
        source = source_of(fs, dataset.tar_files)
        return {SOURCE_KEY: source} if source else {}
    path = dataset.path if "://" in dataset.path else posixpath.abspath(dataset.path)
    part = dataset.shards[0].source
    extra = {SOURCE_KEY: path, LAYOUT_KEY: dataset.layout}
    if getattr(part, "image_column", None):
        extra[IMAGE_COLUMN_KEY] = part.image_column
    if dataset.layout == "folder":
        extra[FILES_PER_PARTITION_KEY] = str(max(p.source.stop - p.source.start for p in dataset.shards))
    return extra


FILES_PER_PARTITION_KEY = "nemo_aesthetic.files_per_partition"


def with_file_metadata(table, extra: dict[str, str]):
    """``table`` with ``extra`` added to its schema's key-value metadata (strings, UTF-8)."""
    if not extra:
        return table
    merged = dict(table.schema.metadata or {})
    merged.update({k.encode(): str(v).encode() for k, v in extra.items()})
    return table.replace_schema_metadata(merged)


def file_metadata(fs, parquet_path: str) -> dict[str, str]:
    """The ``nemo_aesthetic.*`` key-value metadata of one Parquet file."""
    with fs.open(parquet_path, "rb") as f:
        meta = pq.read_schema(f).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"nemo_aesthetic.")}


def tars_from_source(fs, shards: list, storage_options: dict) -> list:
    """Shards without tars get the tars their Parquet's recorded source holds (same filesystem)."""
    if not shards or any(s.tar is not None for s in shards):
        return shards
    recorded = file_metadata(fs, shards[0].parquet)
    source = recorded.get(SOURCE_KEY)
    if not source:
        return shards
    if recorded.get(LAYOUT_KEY):
        return _partitions_from_source(source, recorded, shards, storage_options)
    src_fs, src_root = fsspec.core.url_to_fs(source, **storage_options)
    if src_fs.protocol != fs.protocol:
        logger.warning("the metadata's images are in %s, another filesystem than the metadata's; "
                       "open that directory instead", source)
        return shards
    src_root = src_root.rstrip("/")
    try:  # one listing, not one existence check per tar (serial round trips on an object store)
        listed = {posixpath.basename(p.rstrip("/")) for p in src_fs.ls(src_root, detail=False)}
    except FileNotFoundError:
        listed = set()
    present = {s.name for s in shards if f"{s.name}.tar" in listed}
    if not present:
        logger.warning("the metadata was scored from %s, which no longer holds its tars", source)
        return shards
    logger.info("metadata only: reading the images from the tars in %s (recorded when it was scored)", source)
    local = is_local(src_fs)  # workers re-open these paths with fsspec: keep an object store's protocol
    return [dataclasses.replace(s, tar=None if s.name not in present else f"{src_root}/{s.name}.tar" if local
                                else src_fs.unstrip_protocol(f"{src_root}/{s.name}.tar")) for s in shards]


def _partitions_from_source(source: str, recorded: dict, shards: list, storage_options: dict) -> list:
    """Shards of metadata scored from a folder or Parquet files get their source partitions back,
    by name (the source is listed again as it was when scored)."""
    from nemo_aesthetic.engine.sources import list_partitions

    layout = recorded[LAYOUT_KEY]
    try:
        options = {"image_column": recorded.get(IMAGE_COLUMN_KEY)} if layout == "parquet" else \
            {"files_per_partition": int(recorded.get(FILES_PER_PARTITION_KEY) or 1000)}
        parts = {p.name: p for p in list_partitions(source, layout, storage_options, **options)}
    except (OSError, ValueError) as exc:
        logger.warning("the metadata was scored from %s, which cannot be read now: %s", source, exc)
        return shards
    logger.info("metadata only: reading the images from the %s source %s (recorded when it was scored)",
                layout, source)
    return [dataclasses.replace(s, source=parts.get(s.name)) for s in shards]
