"""``ImageTextPairDataset``'s constructors for layouts other than WebDataset shards.

Each reads a source of :mod:`nemo_aesthetic.engine.sources` as one Dask partition per source
partition (``dd.from_map``: the driver holds one small spec per partition and nothing per image);
the rows are the images' metadata, without their bytes, and the embedders read the bytes from the
same partition on the worker. Every image is a row, and every row comes out of the embedders with
an embedding or a reason.

The layouts are read-only: ``save_metadata`` needs a ``path`` (``score --out``), writing one
Parquet per input Parquet file or per folder partition, and records where the images are, so a
dataset opened on that output (``from_webdataset(OUT)``, ``report``, ``filter``) reads them again.
"""
from __future__ import annotations

import fsspec

from nemo_aesthetic import frames
from nemo_aesthetic.datasets.shards import Shard

# (nemo_aesthetic.engine is imported where it is used: it imports torch, which opening a
# dataset on the client never needs.)


class SourceConstructors:
    """Mixed into :class:`~nemo_aesthetic.datasets.ImageTextPairDataset`: ``from_image_folder``,
    ``from_parquet`` and ``from_path``, next to ``from_webdataset``."""

    @property
    def layout(self) -> str:
        """The layout the images are in (see :data:`nemo_aesthetic.engine.sources.LAYOUTS`)."""
        source = next((s.source for s in self.shards if getattr(s, "source", None) is not None), None)
        return "webdataset" if source is None else source.layout

    def _check_output(self, path: str | None) -> None:
        """Other layouts are read-only: their metadata is written elsewhere, never over the images."""
        if path is None and self.layout != "webdataset":
            raise ValueError(f"{self.path} is a {self.layout} dataset, read-only here: pass save_metadata a "
                             "path (score --out DIR) for its metadata")
        if path is not None and self.layout == "parquet":  # one output file per input file, by name
            from nemo_aesthetic.atomic import location

            fs, root = fsspec.core.url_to_fs(path, **self.storage_options)
            targets = {location(fs, f"{root.rstrip('/')}/{s.name}.parquet") for s in self.shards}
            inputs = {location(fs, fsspec.core.url_to_fs(s.source.path, **self.storage_options)[1])
                      for s in self.shards if s.source is not None}
            if targets & inputs:
                raise ValueError(f"writing the metadata to {path} would replace the input Parquet files (and "
                                 "their images); choose another directory")

    @classmethod
    def from_image_folder(cls, path: str, storage_options: dict | None = None,
                          files_per_partition: int = 1000):
        """Open a folder of image files (searched recursively, in sorted order; local or fsspec URL).

        One row per image file, with columns ``key`` (its path relative to the folder, which is
        also the id column), ``path`` and ``caption`` (a ``.txt`` file of the same stem, else null).
        Partitions hold ``files_per_partition`` files of one directory. What is not read and why
        (symlinks out of the folder, unreadable files): :mod:`nemo_aesthetic.engine.folder_source`.
        """
        from nemo_aesthetic.engine import sources
        from nemo_aesthetic.engine.folder_source import ROW_SCHEMA

        parts = list(sources.list_partitions(path, "folder", storage_options,
                                             files_per_partition=files_per_partition))
        if not parts:
            raise FileNotFoundError(f"no image files in {path}; we read {sources.layouts_line()}")
        return cls._from_partitions(path, "folder", parts, ROW_SCHEMA, storage_options)

    @classmethod
    def from_parquet(cls, path: str, image_column: str | None = None, storage_options: dict | None = None):
        """Open Parquet files that hold the image bytes (a file, or a directory searched recursively).

        Reads img2dataset's ``output_format="parquet"`` (a ``jpg``/``png``/``webp`` column) and
        Hugging Face exports (an ``image`` struct ``{bytes, path}``); ``image_column`` names the
        column when it is neither. One partition per file; rows are every column but the image's,
        plus ``key`` (the file's own, else the row number) and, for a struct, ``image_path``. The
        first file's columns are the dataset's (another file's extra columns are dropped, missing
        ones null).
        """
        from nemo_aesthetic.datasets.schema import conform
        from nemo_aesthetic.engine import parquet_source, sources

        storage_options = storage_options or {}
        parts = list(sources.list_partitions(path, "parquet", storage_options, image_column=image_column))
        first = parts[0]
        fs, first_path = fsspec.core.url_to_fs(first.path, **storage_options)
        with fs.open(first_path, "rb") as f:
            import pyarrow.parquet as pq

            schema = pq.read_schema(f)
        column = parquet_source.image_column_of(schema, image_column, first.path)
        row_schema = parquet_source.row_schema(schema, column)
        return cls._from_partitions(path, "parquet", parts, row_schema, storage_options, conform=conform)

    @classmethod
    def from_path(cls, path: str, layout: str | None = None, id_col: str = "key",
                  storage_options: dict | None = None, image_column: str | None = None):
        """Open ``path`` in whichever layout it is (:func:`~nemo_aesthetic.engine.sources.detect_layout`),
        or in ``layout`` ("webdataset", "folder", "parquet")."""
        from nemo_aesthetic.engine import sources

        layout = sources.check_layout(layout) if layout else sources.detect_layout(path, storage_options)
        if layout == "webdataset":
            return cls.from_webdataset(path, id_col=id_col, storage_options=storage_options)
        if layout == "folder":
            return cls.from_image_folder(path, storage_options=storage_options)
        return cls.from_parquet(path, image_column=image_column, storage_options=storage_options)

    @classmethod
    def _from_partitions(cls, path, layout, parts, schema, storage_options, conform=None):
        from nemo_aesthetic.engine.partitions import from_shards

        storage_options = storage_options or {}
        metadata = from_shards(_read_rows, parts, schema=schema, storage_options=storage_options, conform=conform,
                               meta=frames.arrow_to_frame(schema.empty_table()), label=f"read-{layout}")
        shards = [Shard(p.name, None, None, source=p) for p in parts]
        return cls(path, metadata, [None] * len(parts), "key", shards=shards, storage_options=storage_options)


def _read_rows(partition, schema, storage_options: dict, conform=None):
    from nemo_aesthetic.engine import sources

    table = sources.read_rows(partition, storage_options)
    return frames.arrow_to_frame(conform(table, schema, partition.path) if conform else table)
