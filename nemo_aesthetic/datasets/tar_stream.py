"""The byte streams :func:`nemo_aesthetic.datasets.shards.iter_samples` reads a tar through.

tarfile parses every header (ustar, GNU, pax, sparse maps) in mode ``"r"`` over a
:class:`ForwardOnly` stream, and a member's bytes are one :func:`member_bytes` read: tarfile's
stream mode ``"r|"`` gave the same headers but copied every byte through a Python loop 10 KiB at a
time (~2x the cost per sample; ``bench/host_side.py``).
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile

COMPRESSED_READERS = (
    (b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    (b"BZh", lambda raw: bz2.BZ2File(raw)),
    (b"\xfd7zXZ\x00", lambda raw: lzma.LZMAFile(raw)),
)


def forward_only(raw) -> "ForwardOnly":
    """``raw`` uncompressed (the standard library's reader for a compressed tar), as a stream that
    only moves forward."""
    head = raw.read(6)
    for magic, reader in COMPRESSED_READERS:
        if head.startswith(magic):
            return ForwardOnly(reader(Prefixed(head, raw)))
    if raw.seekable():
        raw.seek(0)
        return ForwardOnly(raw)
    return ForwardOnly(Prefixed(head, raw))


class ForwardOnly:
    """A stream tarfile can open in mode ``"r"`` that never goes back, as its stream mode ``"r|"``.

    Reading a tar sample by sample in stream mode costs ~180-650 us per sample of Python: every
    read goes through tarfile's ``_Stream``, which copies the data 10 KiB at a time, and then
    through ``extractfile``'s reader. Here tarfile still parses every header, but a member's bytes
    are one ``read`` of the underlying file. Seeking backwards raises ``tarfile.StreamError`` as in
    stream mode, so a hostile header (a negative size) cannot send the reader back in a loop.
    Seeking forward, over a member we do not read, is a seek where the file can (a local or
    object-store file) and bounded reads where it cannot (decompressors seek by reading, in
    bounded steps; a stream without seek is read and dropped 1 MiB at a time).
    """

    SKIP_CHUNK = 2**20

    def __init__(self, stream):
        self._stream = stream
        self._seekable = stream.seekable()
        self._pos = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stream.close()  # a decompressor's reader; closing the caller's file twice is harmless

    def read(self, size: int = -1) -> bytes:
        """``size`` bytes (fewer only at the end), asked of the file in pieces of at most
        :attr:`SKIP_CHUNK` (a header may declare a pax record of 8 GiB, and a file's ``read(n)``
        allocates ``n`` bytes first) and again after a short read (a pipe, a socket)."""
        data = self._stream.read(size if 0 <= size <= self.SKIP_CHUNK else self.SKIP_CHUNK)
        if size < 0 or len(data) < size:
            parts, left = [data], (size - len(data)) if size >= 0 else float("inf")
            while left > 0 and parts[-1]:
                parts.append(self._stream.read(int(min(left, self.SKIP_CHUNK))))
                left -= len(parts[-1])
            data = b"".join(parts)
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET:
            raise tarfile.StreamError("only absolute seeks are supported")
        if pos < self._pos:
            raise tarfile.StreamError("seeking backwards is not allowed")
        if pos > self._pos and self._seekable:
            self._stream.seek(pos)
            self._pos = pos
        while self._pos < pos:
            if not self.read(min(pos - self._pos, self.SKIP_CHUNK)):
                break  # past the end: the next read returns nothing, which tarfile reports
        return self._pos


class Prefixed(io.RawIOBase):
    """The bytes already read to sniff the format, then the rest of ``raw`` (no seek needed)."""

    def __init__(self, head: bytes, raw):
        self._head, self._raw = head, raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._raw.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def member_bytes(stream: "ForwardOnly", info: tarfile.TarInfo) -> bytes:
    """A regular member's bytes, read in one call (tarfile's ``extractfile`` would go through two
    more layers of Python per call); a tar that ends inside them is an error, as in tarfile. A
    negative size (base-256 in a hostile header) reads nothing, as tarfile's reader does; tarfile
    then fails on what follows."""
    if info.size <= 0:
        return b""
    stream.seek(info.offset_data)
    data = stream.read(info.size)
    if len(data) != info.size:
        raise tarfile.ReadError("unexpected end of data")
    return data


class StrictTarInfo(tarfile.TarInfo):
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
