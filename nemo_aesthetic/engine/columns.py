"""Columns: one shard's results aligned to its metadata rows by key (the legacy front's join)."""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from nemo_aesthetic.datasets.shards import KeyIndex, ShardReadError
from nemo_aesthetic.engine.batching import EmbeddedBatch
from nemo_aesthetic.engine.reading import SeenKeys, ShardItem


class ShardColumns:
    """Results of one shard as columns aligned to its metadata rows by key.

    Every row gets an embedding (and scores) or a reason: a missing id, a duplicate, no image
    member, a decode failure, img2dataset's own status, the tar's error, or no sample at all.
    """

    def __init__(self, ids: list, dim: int, score_names: list[str]):
        n = len(ids)
        self.index = KeyIndex(ids)
        self.seen = SeenKeys(self.index.position)
        self.embeddings = np.zeros((n, dim), dtype=np.float32)
        self.valid = np.zeros(n, dtype=bool)
        self.scores = {name: np.zeros(n, dtype=np.float32) for name in score_names}
        self.errors: list[str | None] = [None] * n
        self.duplicated = np.zeros(n, dtype=bool)
        self.unmatched = 0
        self.unmatched_examples: list[str] = []
        self.tar_error: str | None = None
        for pos, key in enumerate(ids):
            if key is None or key != key:
                self.errors[pos] = "missing id (null in the id column)"

    def payloads(self, items: Iterable[ShardItem]) -> Iterator[tuple[int, bytes]]:
        """``(row position, image bytes)`` of the items that map to a row and can be tried;
        the others are counted or given their reason. A broken tar ends the stream, its error
        kept for the rows not reached."""
        try:
            for item in items:
                if item.ident is None:
                    self.unmatched += 1
                    if len(self.unmatched_examples) < 5:
                        self.unmatched_examples.append(item.key)
                    continue
                if item.duplicate:
                    self.duplicated[item.ident] = True
                    continue
                if item.problem is not None:  # no image member, or one left unread
                    self.errors[item.ident] = item.problem
                    continue
                yield item.ident, item.image[1]
        except ShardReadError as exc:
            self.tar_error = str(exc)

    def fail(self, position: int, reason: str) -> None:
        self.errors[position] = reason

    def add(self, batch: EmbeddedBatch) -> None:
        positions = np.asarray(batch.tags)
        self.embeddings[positions] = batch.embeddings
        self.valid[positions] = True
        for name, values in batch.scores.items():
            self.scores[name][positions] = values.reshape(-1)

    def finish(self, tar_name: str, statuses: list | None) -> None:
        """Give every row that got no embedding its reason."""
        self.valid &= ~self.duplicated
        for pos in np.flatnonzero(self.duplicated):
            self.errors[pos] = f"duplicate sample for this key in {tar_name}: image is ambiguous"
        for pos in np.flatnonzero(~self.valid):
            if self.errors[pos] is not None:
                continue
            # img2dataset's own word comes first: such a row never had an image, whatever the tar's state.
            if statuses is not None and statuses[pos][0] not in (None, "success"):
                status, message = statuses[pos]
                self.errors[pos] = f"no image: img2dataset status {status}" + (f" ({message})" if message else "")
            elif self.tar_error is not None:
                self.errors[pos] = self.tar_error
            else:
                self.errors[pos] = f"no sample for this key in {tar_name}"
