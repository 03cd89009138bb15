"""Keep the top fraction or the top k rows by score over a whole dataset, exactly, on Dask.

No machine ever holds all the scores. Three passes over the score column, each one task per
partition with only small results coming back:

1. count, min and max of the scores (nulls are never kept);
2. a histogram of ``BINS`` equal bins over [min, max], summed in a tree of tasks: the client
   receives one histogram, and finds the bin holding the k-th largest score;
3. the scores inside that one bin (the client receives at most the rows of one 1/65,536 slice of
   the score range: for LAION-5B's scores, a few hundred thousand floats), from which the exact
   k-th largest score follows.

Rows above it are kept, and of the rows equal to it only as many as make exactly k, the first
ones in partition order, so the result is exact and deterministic. The score column is
persisted on the workers for the passes (4 bytes per row, spread over the cluster).
"""
from __future__ import annotations

import math

import dask
import numpy as np
from dask import delayed

from nemo_aesthetic import frames

#: Histogram bins of pass 2.
BINS = 65536
#: Partial histograms summed per task in the tree of pass 2.
TREE_FANOUT = 16


def mark_top(metadata, score_column: str = "aesthetic_score", *, top_percent: float | None = None,
             top_k: int | None = None, keep_column: str = "keep"):
    """``(metadata with a boolean keep_column, summary)`` marking the top rows by ``score_column``.

    Give ``top_percent`` (of the scored rows, rounded up) or ``top_k``. The summary holds
    ``scored`` (non-null scores), ``kept`` (exactly ``min(k, scored)``) and ``threshold`` (the
    lowest kept score; None when nothing is kept).
    """
    if (top_percent is None) == (top_k is None):
        raise ValueError("give exactly one of top_percent and top_k")
    if top_percent is not None and not 0 <= top_percent <= 100:
        raise ValueError(f"top_percent must be within 0..100, not {top_percent}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0, not {top_k}")
    if score_column not in metadata.columns:
        raise KeyError(f"no column {score_column!r} to select by; columns: {list(metadata.columns)}")
    scores = metadata[score_column].persist()
    parts = scores.to_delayed()
    stats = dask.compute(*[delayed(_stats)(p) for p in parts])
    scored = sum(n for n, _, _ in stats)
    k = math.ceil(scored * top_percent / 100 - 1e-9) if top_percent is not None else min(top_k, scored)
    if k == 0:
        threshold, allowance = math.inf, [0] * len(parts)
    else:
        low = min(lo for n, lo, _ in stats if n)
        high = max(hi for n, _, hi in stats if n)
        threshold, allowance = _kth_largest(parts, k, low, high)
    keep = metadata.map_partitions(_mark, score_column, keep_column, threshold, allowance,
                                   meta=_with_keep(metadata._meta, keep_column))
    summary = {"scored": scored, "kept": k, "threshold": None if k == 0 else float(threshold)}
    return keep, summary


def _kth_largest(parts, k: int, low: float, high: float) -> tuple[float, list[int]]:
    """The k-th largest score, and per partition how many rows equal to it to keep."""
    edges = (low, high)
    histogram = dask.compute(_tree_sum([delayed(_histogram)(p, edges) for p in parts]))[0]
    above = np.cumsum(histogram[::-1])[::-1]  # above[i]: scores in bin i or higher
    b = int(np.flatnonzero(above >= k)[-1])  # the highest bin whose tail holds >= k scores
    higher = int(above[b + 1]) if b + 1 < BINS else 0
    in_bin = dask.compute(*[delayed(_bin_values)(p, edges, b) for p in parts])
    values = np.sort(np.concatenate(in_bin))[::-1]
    threshold = values[k - higher - 1]
    ties_needed = k - higher - int((values > threshold).sum())
    allowance = []
    for part_values in in_bin:
        take = min(ties_needed, int((part_values == threshold).sum()))
        allowance.append(take)
        ties_needed -= take
    return float(threshold), allowance


def _valid(series) -> np.ndarray:
    values = frames.to_host(series).to_numpy(dtype=np.float64, na_value=np.nan)
    return values[~np.isnan(values)]


def _stats(series) -> tuple[int, float, float]:
    v = _valid(series)
    return (len(v), float(v.min()), float(v.max())) if len(v) else (0, math.inf, -math.inf)


def _bin_of(v: np.ndarray, edges) -> np.ndarray:
    low, high = edges
    if high <= low:
        return np.zeros(len(v), np.int64)
    return np.minimum(((v - low) / (high - low) * BINS).astype(np.int64), BINS - 1)


def _histogram(series, edges) -> np.ndarray:
    return np.bincount(_bin_of(_valid(series), edges), minlength=BINS)


def _bin_values(series, edges, b: int) -> np.ndarray:
    v = _valid(series)
    return v[_bin_of(v, edges) == b]


def _sum(arrays) -> np.ndarray:
    return np.sum(arrays, axis=0)


def _tree_sum(items: list):
    """Sum delayed arrays in a tree of tasks, TREE_FANOUT at a time (never all on one worker)."""
    while len(items) > 1:
        items = [delayed(_sum)(items[i:i + TREE_FANOUT]) for i in range(0, len(items), TREE_FANOUT)]
    return items[0]


def _with_keep(df, keep_column: str):
    return df.assign(**{keep_column: np.zeros(len(df), bool)})


def _mark(df, score_column: str, keep_column: str, threshold: float, allowance: list[int], partition_info=None):
    values = frames.to_host(df[score_column]).to_numpy(dtype=np.float64, na_value=np.nan)
    keep = values > threshold
    ties = np.flatnonzero(values == threshold)
    if len(ties):
        keep[ties[:allowance[partition_info["number"]]]] = True
    return df.assign(**{keep_column: keep})
