"""Scores summarised on the workers, so that nothing per row is gathered on the driver.

``nemo-aesthetic score`` prints, and ``report`` shows, numbers about every row of a dataset that
may hold two billion (LAION): rows, scored rows, errors grouped by reason, score quantiles, a
histogram, the best and worst images. Each is computed here in passes of one task per shard
(:func:`~nemo_aesthetic.engine.partitions.map_shards`, each task carrying its shard's name) whose
small results are merged by a tree reduction (``split_every`` at a time), so the driver receives
a few hundred numbers and O(k) rows, whatever the number of rows, and its work stays linear in
shards. Each pass reads only the columns it needs (the readers prune the others, the 768-wide
``image_embedding`` included).

Every number is **exact**, the same as numpy's over all the scores (``np.quantile``'s default
linear method, ``np.histogram``'s bins): a quantile is found by radix selection on the scores'
64-bit order-preserving keys, 16 bits per pass. The first pass counts the keys' top 16 bits;
each later pass either gathers the values of the buckets that hold a wanted rank (when a bucket
holds at most :data:`GATHER_LIMIT` scores) or counts the next 16 bits within them. A small
dataset takes one extra pass; a LAION-sized one two or three; never more than four.
"""
from __future__ import annotations

import collections
import dataclasses
import functools

import numpy as np
import pandas as pd

from nemo_aesthetic.report.data import ERROR_COLUMN, SCORE_COLUMN, reason_group

#: Partial results merged per task of the tree reduction.
SPLIT_EVERY = 32
#: A bucket of at most this many scores is gathered whole to find a rank in it.
GATHER_LIMIT = 1 << 16
_BITS = 16
_SIGN = np.uint64(1 << 63)


def order_keys(scores: np.ndarray) -> np.ndarray:
    """uint64 keys that sort as the float64 ``scores`` do (finite scores; -0.0 just before 0.0)."""
    bits = np.ascontiguousarray(scores, dtype=np.float64).view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def key_values(keys: np.ndarray) -> np.ndarray:
    """The float64 scores of :func:`order_keys`' keys."""
    keys = np.asarray(keys, dtype=np.uint64)
    return np.where(keys & _SIGN, keys & ~_SIGN, ~keys).view(np.float64)


def finite_scores(part) -> np.ndarray:
    return part[SCORE_COLUMN].to_numpy(dtype=float, na_value=np.nan) if len(part) else np.array([])


# ---------------------------------------------------------------------------------------- counts
@dataclasses.dataclass
class ScoreStats:
    """Counts of one shard, or of many merged (:meth:`merge`, left = earlier shards).

    ``groups`` maps an error group (:func:`~nemo_aesthetic.report.data.reason_group`) to
    ``[rows, first reason seen]``; ``buckets`` counts the finite scores by their keys' top 16 bits.
    """

    rows: int = 0
    scored: int = 0
    errors: int = 0
    unscored_no_error: int = 0
    shards: int = 0
    total: float = 0.0
    lowest: float | None = None
    highest: float | None = None
    groups: dict = dataclasses.field(default_factory=dict)
    buckets: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @classmethod
    def of(cls, part) -> "ScoreStats":
        scores = finite_scores(part)
        finite = scores[np.isfinite(scores)]
        reasons = (part[ERROR_COLUMN].to_numpy(dtype=object, na_value=None) if ERROR_COLUMN in part.columns
                   else np.full(len(part), None, dtype=object))
        has_reason = np.array([r is not None and r == r for r in reasons], dtype=bool)
        stats = cls(rows=len(part), scored=len(finite), errors=int(has_reason.sum()),
                    unscored_no_error=int((~np.isfinite(scores) & ~has_reason).sum()),
                    shards=int(len(part) > 0), total=float(finite.sum()),
                    lowest=float(finite.min()) if len(finite) else None,
                    highest=float(finite.max()) if len(finite) else None)
        for reason in reasons[has_reason]:
            reason = str(reason)
            stats.groups.setdefault(reason_group(reason), [0, reason])[0] += 1
        prefixes, counts = np.unique(order_keys(finite) >> np.uint64(64 - _BITS), return_counts=True)
        stats.buckets.update(dict(zip(prefixes.tolist(), counts.tolist())))
        return stats

    def merge(self, other: "ScoreStats") -> "ScoreStats":
        def pick(a, b, f):
            return b if a is None else a if b is None else f(a, b)

        groups = {k: list(v) for k, v in self.groups.items()}
        for name, (count, example) in other.groups.items():
            groups.setdefault(name, [0, example])[0] += count
        return ScoreStats(self.rows + other.rows, self.scored + other.scored, self.errors + other.errors,
                          self.unscored_no_error + other.unscored_no_error, self.shards + other.shards,
                          self.total + other.total, pick(self.lowest, other.lowest, min),
                          pick(self.highest, other.highest, max), groups, self.buckets + other.buckets)

    def error_groups(self) -> list[tuple[str, int, str]]:
        """``(group, rows, first example)``, most frequent first (as :func:`error_groups`)."""
        return [(name, count, example)
                for name, (count, example) in sorted(self.groups.items(), key=lambda kv: (-kv[1][0], kv[0]))]

    @property
    def mean(self) -> float | None:
        return self.total / self.scored if self.scored else None


# ---------------------------------------------------------------------------------------- passes
def reduce_shards(frame, shard_names, per_shard, merge, *args, label: str, split_every: int = SPLIT_EVERY):
    """``merge`` over ``per_shard(partition, shard name, *args)`` of every shard, in shard order.

    One task per shard, then a tree of merges ``split_every`` wide; computed with the current
    scheduler (the active distributed client, if any). Only the merged value reaches the driver.
    """
    return shard_reduction(frame, shard_names, per_shard, merge, *args, label=label,
                           split_every=split_every).compute()


def shard_reduction(frame, shard_names, per_shard, merge, *args, label: str, split_every: int = SPLIT_EVERY):
    """:func:`reduce_shards`, lazy (a dask scalar)."""
    from nemo_aesthetic.engine.partitions import map_shards

    boxed = map_shards(_boxed, frame, shard_names, per_shard, *args, meta=pd.Series([], dtype=object),
                       label=label)
    combine = functools.partial(_merge_box, merge, boxed=True)
    return boxed.reduction(_same, combine=combine, aggregate=functools.partial(_merge_box, merge),
                           meta=object, split_every=split_every)


def _boxed(part, shard_name, per_shard, *args):
    from nemo_aesthetic import frames

    return pd.Series([per_shard(frames.to_host(part), shard_name, *args)], dtype=object)


def _same(series):
    return series


def _merge_box(merge, values, boxed: bool = False):
    merged = functools.reduce(merge, np.asarray(values, dtype=object).ravel().tolist())
    return pd.Series([merged], dtype=object) if boxed else merged


def exact_quantiles(frame, shard_names, stats: ScoreStats, qs) -> list[float]:
    """``np.quantile(all finite scores, qs)`` exactly (linear method), by radix selection.

    ``stats`` is the first pass (:meth:`ScoreStats.of` merged); each further pass reads only the
    score column. Returns [] when nothing is scored.
    """
    n = stats.scored
    if not n:
        return []
    virtual = (n - 1) * np.asarray(qs, dtype=float)
    previous = np.floor(virtual).astype(np.int64)
    following = np.minimum(previous + 1, n - 1)
    ranks = sorted(set(previous.tolist()) | set(following.tolist()))
    value_of = _select_ranks(frame[[SCORE_COLUMN]], shard_names, stats.buckets, ranks)
    a = np.array([value_of[r] for r in previous.tolist()])
    b = np.array([value_of[r] for r in following.tolist()])
    gamma = virtual - previous
    diff = b - a
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma).tolist()  # numpy's _lerp


def _select_ranks(frame, shard_names, buckets: collections.Counter, ranks: list[int]) -> dict[int, float]:
    """The ``ranks``-th smallest finite scores; ``buckets``: their top-16-bit counts (first pass)."""
    found: dict[int, float] = {}
    pending = {r: (None, r) for r in ranks}   # rank -> (bucket it is known to be in, rank within it)
    shift = 64 - _BITS                        # the buckets count ``key >> shift``
    while pending:
        where, gather, refine = {}, set(), set()
        for r, (parent, within) in pending.items():
            order = sorted(p for p in buckets if parent is None or p >> _BITS == parent)
            ends = np.cumsum([buckets[p] for p in order])
            i = int(np.searchsorted(ends, within, side="right"))
            bucket, within = order[i], within - (int(ends[i - 1]) if i else 0)
            if shift == 0:                    # a bucket of one key: the score itself
                found[r] = float(key_values(np.array([bucket], dtype=np.uint64))[0])
                continue
            where[r] = (bucket, within)
            (gather if buckets[bucket] <= GATHER_LIMIT else refine).add(bucket)
        if not where:
            break
        gathered, finer = reduce_shards(frame, shard_names, _bucket_pass, _merge_bucket_pass, shift,
                                        sorted(gather), sorted(refine), label="score-quantiles")
        pending = {}
        for r, (bucket, within) in where.items():
            if bucket in gathered:
                found[r] = float(key_values(np.sort(gathered[bucket])[within : within + 1])[0])
            else:
                pending[r] = (bucket, within)
        buckets, shift = finer, shift - _BITS
    return found


def _bucket_pass(part, shard_name, shift: int, gather: list[int], refine: list[int]):
    scores = finite_scores(part)
    keys = order_keys(scores[np.isfinite(scores)])
    prefixes = keys >> np.uint64(shift)
    gathered = {p: keys[prefixes == np.uint64(p)] for p in gather}
    finer = collections.Counter()
    if refine:
        inside = keys[np.isin(prefixes, np.array(refine, dtype=np.uint64))]
        values, counts = np.unique(inside >> np.uint64(shift - _BITS), return_counts=True)
        finer.update(dict(zip(values.tolist(), counts.tolist())))
    return gathered, finer


def _merge_bucket_pass(a, b):
    gathered = {p: np.concatenate([a[0].get(p, np.array([], np.uint64)), b[0].get(p, np.array([], np.uint64))])
                for p in a[0].keys() | b[0].keys()}
    return gathered, a[1] + b[1]


# ---------------------------------------------------------------------------------------- scored files
def score_summary(fs, paths: list[str], names: list[str], qs) -> tuple[ScoreStats, list[float]]:
    """:class:`ScoreStats` and exact quantiles ``qs`` of the written Parquet files ``paths`` (one per
    shard, named ``names``), read on the workers: their score and error columns only."""
    frame = scored_files(fs, paths)
    stats = shard_stats(frame, names).compute()
    return stats, exact_quantiles(frame, names, stats, qs)


def scored_files(fs, paths: list[str]):
    """The score and error columns of written Parquet files, one partition per file."""
    from nemo_aesthetic.engine.partitions import from_shards

    meta = pd.DataFrame({SCORE_COLUMN: pd.Series([], dtype=float), ERROR_COLUMN: pd.Series([], dtype=object)})
    return from_shards(read_scored_columns, paths, fs=fs, meta=meta, label="read-scores")


def shard_stats(frame, names):
    """:class:`ScoreStats` of every shard merged (lazy: a dask scalar)."""
    return shard_reduction(frame, names, _stats_of, ScoreStats.merge, label="score-counts")


def _stats_of(part, shard_name):
    return ScoreStats.of(part)


def read_scored_columns(path: str, fs, columns=None):
    """``columns`` of one written Parquet (all null where the file lacks one), as pandas; read with
    retries, only the columns asked for (dask's optimizer passes ``columns=``)."""
    import pyarrow.parquet as pq

    from nemo_aesthetic.retrying import with_retries

    columns = list(columns) if columns is not None else [SCORE_COLUMN, ERROR_COLUMN]

    def read():
        with fs.open(path, "rb") as f:
            file = pq.ParquetFile(f)
            present = [c for c in columns if c in file.schema_arrow.names]
            return file.read(columns=present).to_pandas()

    frame = with_retries(read, what=f"reading {path}")
    for column in columns:
        if column not in frame.columns:
            frame[column] = np.nan if column == SCORE_COLUMN else None
    return frame[columns]
