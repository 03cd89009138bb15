"""Reading: a tar shard's samples grouped by key, each judged (duplicates, missing or refused
image members, damaged tars) before anything is decoded."""
from __future__ import annotations

import collections
import dataclasses
import posixpath
from typing import Callable, Hashable, Iterable, Iterator

import fsspec

from nemo_aesthetic.datasets.shards import Sample, ShardReadError, iter_samples
from nemo_aesthetic.image.preprocess import ImageDecodeError, open_image, pick_image
from nemo_aesthetic.prefetch import prefetch


class SeenKeys:
    """The one duplicate-key rule.

    A sample is a *duplicate* when an earlier sample of the same shard had the same identity
    (``identify(key)``: the key itself, or the metadata row it maps to), or when it holds two
    members with the same extension: either way which image belongs to the key is ambiguous.
    A duplicate is never embedded. What happens to the first copy depends on what it already
    became: the legacy front, whose results are rows joined by key, withdraws the row's result
    (``duplicate sample for this key``); the stage front has already sent the first copy
    downstream, so it keeps that one and drops the repeats with the reason.
    """

    def __init__(self, identify: Callable[[str], Hashable | None] = lambda key: key):
        self.identify = identify
        self.count: collections.Counter = collections.Counter()

    def check(self, sample: Sample) -> tuple[Hashable | None, bool]:
        """``(identity, is_duplicate)``; identity None means the key maps to nothing."""
        ident = self.identify(sample.key)
        if ident is None:
            return None, False
        self.count[ident] += 1
        exts = sample.extensions()
        return ident, self.count[ident] > 1 or len(set(exts)) != len(exts)


@dataclasses.dataclass
class ShardItem:
    """One sample of a shard as the engine judged it.

    Attributes:
        key: the sample key in the tar.
        ident: what :class:`SeenKeys` mapped the key to (None: no such row/key).
        tar_path: the tar it came from.
        sample: every member (extension, header, bytes), as read.
        image: the picked image member ``(extension, bytes)``; None if the sample has none.
        duplicate: :class:`SeenKeys` found it ambiguous.
    """

    key: str
    ident: Hashable | None
    tar_path: str
    sample: Sample
    image: tuple[str, bytes] | None
    duplicate: bool

    @property
    def problem(self) -> str | None:
        """Why this sample cannot be embedded (None if it can be tried)."""
        if self.duplicate:
            return f"duplicate sample for this key in {posixpath.basename(self.tar_path)}: image is ambiguous"
        if self.sample.refused:  # a member too large or sparse, left unread in the tar
            return self.sample.refused
        if self.image is None:
            return f"sample has no image member (has: {', '.join(self.sample.extensions())})"
        return None

    def check(self, max_pixels: int) -> str | None:
        """Why this sample cannot be passed on as a whole image (None if it can): :attr:`problem`,
        a sample cut off by a broken tar (members after the break may be missing), or an image
        member whose header is not an image or is over ``max_pixels`` (nothing is decoded)."""
        if self.problem or not self.sample.complete:
            return self.problem or "sample cut off where the tar is damaged (members after the damage are missing)"
        try:
            open_image(self.image[1], max_pixels)
        except ImageDecodeError as exc:
            return str(exc)
        return None


def read_shard(fs, tar_path: str, seen: SeenKeys | None = None, skipped: list | None = None) -> Iterator[ShardItem]:
    """The samples of one tar, in order, each judged by ``seen`` (default: by key).

    Raises :class:`~nemo_aesthetic.datasets.shards.ShardReadError` after the samples read before
    a break in the tar.
    """
    seen = seen or SeenKeys()
    for sample in iter_samples(fs, tar_path, skipped):
        ident, duplicate = seen.check(sample)
        image = None if duplicate else pick_image(sample.members)
        yield ShardItem(sample.key, ident, tar_path, sample, image, duplicate)


def read_tars(paths: Iterable[str], storage_options: dict, max_pixels: int,
              on_tar_error: Callable[[str, ShardReadError], None],
              depth: int = 64) -> Iterator[tuple[str, ShardItem, str | None]]:
    """``(tar path, item, why it cannot be passed on whole or None)`` for the samples of several
    tars in turn (:meth:`ShardItem.check`), for a front that hands on whole images rather than
    rows. Each tar is read and judged ``depth`` samples ahead by a background thread, so the
    caller's model is not kept waiting on the filesystem. A damaged tar gives the samples read
    before the damage, then ``on_tar_error(path, error)``, and the next tar is read.
    """
    for path in paths:
        fs, fs_path = fsspec.core.url_to_fs(path, **storage_options)
        judged = ((item, item.check(max_pixels)) for item in read_shard(fs, fs_path))
        try:
            for item, reason in prefetch(judged, depth=depth, name="shard-reader"):
                yield path, item, reason
        except ShardReadError as exc:
            on_tar_error(path, exc)
