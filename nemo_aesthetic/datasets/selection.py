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
persisted on the workers for the passes (4 bytes per row, spread over the cluster); the marking
pass reads the metadata again. On metadata fresh from the embedder, that would embed every image
twice, so there the whole metadata is persisted once instead
(:func:`~nemo_aesthetic.engine.partitions.computed_once`; the workers spill it to disk when it
does not fit: at LAION scale, ``save_metadata`` first and select on the saved dataset).
"""
from __future__ import annotations

import math

import dask
import numpy as np
import pandas as pd

from nemo_aesthetic import frames
from nemo_aesthetic.engine.partitions import computed_once, map_shards

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
    metadata = computed_once(metadata)  # embedded once, not once per pass
    scores = metadata[score_column].persist()
    positions = list(range(scores.npartitions))
    scored, low, high = dask.compute(scores.count(), scores.min(), scores.max())
    scored = int(scored)
    k = math.ceil(scored * top_percent / 100 - 1e-9) if top_percent is not None else min(top_k, scored)
    if k == 0:
        threshold, allowance = math.inf, [0] * len(positions)
    else:
        threshold, allowance = _kth_largest(scores, positions, k, float(low), float(high))
    # Each partition's task carries its own allowance, found by the partition itself rather than
    # its position in a computation: ``keep.partitions[5:10]`` keeps what ``keep`` keeps there.
    keep = map_shards(_mark, metadata, allowance, score_column, keep_column, threshold,
                      meta=_with_keep(metadata._meta, keep_column), label="mark-top")
    summary = {"scored": scored, "kept": k, "threshold": None if k == 0 else float(threshold)}
    return keep, summary


def _kth_largest(scores, positions: list[int], k: int, low: float, high: float) -> tuple[float, list[int]]:
    """The k-th largest score, and per partition how many rows equal to it to keep."""
    edges = (low, high)
    histogram = scores.reduction(_histogram, _sum_histograms, split_every=TREE_FANOUT, chunk_kwargs={"edges": edges},
                                 meta=pd.Series([], dtype="int64")).compute().to_numpy()
    above = np.cumsum(histogram[::-1])[::-1]  # above[i]: scores in bin i or higher
    b = int(np.flatnonzero(above >= k)[-1])  # the highest bin whose tail holds >= k scores
    higher = int(above[b + 1]) if b + 1 < BINS else 0
    # The scores in bin b with the partition they come from (few rows: one bin of 65,536).
    in_bin = map_shards(_bin_values, scores, positions, edges, b, meta=_BIN_META, label="scores-in-bin")
    in_bin = in_bin.reduction(_identity, _concat_frames, split_every=TREE_FANOUT, meta=_BIN_META).compute()
    values = np.sort(in_bin["value"].to_numpy())[::-1]
    threshold = values[k - higher - 1]
    ties_needed = k - higher - int((values > threshold).sum())
    tied = in_bin.loc[in_bin["value"] == threshold, "partition"].value_counts()
    allowance = []
    for position in positions:  # the first ties in partition order
        take = min(ties_needed, int(tied.get(position, 0)))
        allowance.append(take)
        ties_needed -= take
    return float(threshold), allowance


def _valid(series) -> np.ndarray:
    values = frames.to_host(series).to_numpy(dtype=np.float64, na_value=np.nan)
    return values[~np.isnan(values)]


def _bin_of(v: np.ndarray, edges) -> np.ndarray:
    low, high = edges
    if high <= low:
        return np.zeros(len(v), np.int64)
    return np.minimum(((v - low) / (high - low) * BINS).astype(np.int64), BINS - 1)


def _histogram(series, edges) -> pd.Series:
    return pd.Series(np.bincount(_bin_of(_valid(series), edges), minlength=BINS))


def _sum_histograms(histograms: pd.Series) -> pd.Series:
    """Partial histograms, concatenated by dask, summed bin by bin."""
    return pd.Series(histograms.to_numpy().reshape(-1, BINS).sum(axis=0))


_BIN_META = pd.DataFrame({"partition": pd.Series([], dtype="int64"), "value": pd.Series([], dtype="float64")})


def _bin_values(series, position: int, edges, b: int) -> pd.DataFrame:
    v = _valid(series)
    v = v[_bin_of(v, edges) == b]
    return pd.DataFrame({"partition": np.full(len(v), position, np.int64), "value": v})


def _identity(frame):
    return frame


def _concat_frames(frame):
    return frame  # dask concatenates the chunks before calling this


def _with_keep(df, keep_column: str):
    return df.assign(**{keep_column: np.zeros(len(df), bool)})


def _mark(df, allowance: int, score_column: str, keep_column: str, threshold: float):
    values = frames.to_host(df[score_column]).to_numpy(dtype=np.float64, na_value=np.nan)
    keep = values > threshold
    ties = np.flatnonzero(values == threshold)
    if len(ties):
        keep[ties[:allowance]] = True
    return df.assign(**{keep_column: keep})
