"""Writing new WebDataset shards and their Parquet files, atomically (each file appears complete
or not at all, on any fsspec filesystem)."""
from __future__ import annotations

import contextlib
import io
import tarfile

import fsspec

from nemo_aesthetic.atomic import atomic_open
from nemo_aesthetic.datasets.shards import Sample


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
        # The tar's end blocks are part of the file: a failure writing them (a full disk) must
        # reach the atomic write as an error, or it would publish a truncated tar as complete.
        if exc_type is None:
            try:
                self._tar.close()
            except BaseException as close_error:
                self._cm.__exit__(type(close_error), close_error, close_error.__traceback__)
                raise
        else:  # closed all the same (into the doomed temporary file), or it retries at garbage collection
            with contextlib.suppress(Exception):
                self._tar.close()
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
