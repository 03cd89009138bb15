"""Everything a report shows about a dataset's scores, computed on the workers.

:func:`summarise` makes three kinds of pass over the metadata (see :mod:`.aggregates`), each one
task per shard reading only the id, caption, score and error columns, merged by a tree reduction:

1. counts, errors by reason, lowest/highest/total, and each shard's candidates for the top and
   bottom grids (its ``top`` best and ``2 * top`` worst rows: the bottom grid skips rows of the
   top grid, so its rows are among the ``2 * top`` worst overall);
2. exact quantiles (p25, p75 and the median, the default threshold), by radix selection;
3. with the threshold known: the histogram's counts (numpy's bins), the rows >= the threshold,
   and each shard's ``3 * top`` nearest rows on either side of it (the around grid skips the
   rows of both other grids).

The driver then runs :func:`~nemo_aesthetic.report.data.select_rows` on the O(top) candidates; as
the candidates hold every row the full frame's selection could pick, the grids are the same as
over all rows, with the same tie-breaking (by shard, then id).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from nemo_aesthetic.report.aggregates import (ScoreStats, exact_quantiles, finite_scores, reduce_shards,
                                              shard_reduction)
from nemo_aesthetic.report.data import _shard_rows, select_rows

#: The quantiles the report's table shows.
QUANTILES = (0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


@dataclasses.dataclass
class ReportData:
    """What :func:`~nemo_aesthetic.report.page.render_html` and the chart need.

    ``quantiles`` maps each of :data:`QUANTILES` to its exact value (empty if nothing is scored);
    ``histogram`` is ``(counts, lo, hi)`` (None if nothing is scored); ``passing``: scored rows
    >= ``threshold``; ``selected``: the grids (:func:`~nemo_aesthetic.report.data.select_rows`).
    """

    stats: ScoreStats
    quantiles: dict
    threshold: float | None
    histogram: tuple | None
    passing: int
    selected: dict


def summarise(dataset, top: int, threshold: float | None = None, caption_col: str | None = "caption",
              bins: int = 40) -> ReportData:
    """The report's numbers and grids for ``dataset`` (an ImageTextPairDataset with scores);
    ``threshold`` None: the median score."""
    from nemo_aesthetic.report.chart import histogram_bins
    from nemo_aesthetic.report.data import check_scored

    columns = check_scored(dataset, caption_col)
    frame, names, id_col = dataset.metadata[columns], [s.name for s in dataset.shards], dataset.id_col
    stats, best, worst, _ = first_pass(frame, names, id_col, caption_col, top).compute()
    quantiles = dict(zip(QUANTILES, exact_quantiles(frame, names, stats, QUANTILES)))
    if threshold is None:
        threshold = quantiles.get(0.5)
    if threshold is None:  # nothing scored
        return ReportData(stats, quantiles, None, None, 0, select_rows(best, top, None))
    n_bins, lo, hi = histogram_bins(stats.scored, stats.lowest, stats.highest, quantiles[0.25], quantiles[0.75],
                                    threshold, bins)
    counts, passing, above, below, _ = reduce_shards(frame, names, _threshold_pass, _merge_threshold, id_col,
                                                  caption_col, top, threshold, n_bins, lo, hi,
                                                  label="report-threshold")
    candidates = pd.concat([f for f in (best, worst, above, below) if not f.empty] or [best], ignore_index=True)
    candidates = candidates[~candidates[["shard", "id"]].astype(str).duplicated()].reset_index(drop=True)
    return ReportData(stats, quantiles, threshold, (counts, lo, hi), passing,
                      select_rows(candidates, top, threshold))


def first_pass(frame, names, id_col: str, caption_col: str | None, top: int):
    """Pass 1, lazy (a dask scalar): ``(ScoreStats, best rows, worst rows, top)``."""
    return shard_reduction(frame, names, _first_pass, _merge_first, id_col, caption_col, top, label="report-counts")


def _ordered(rows, ascending: bool, k: int):
    """The first ``k`` rows by score (``ascending`` or not), then shard, then id as text."""
    keyed = rows.assign(_id=rows["id"].astype(str))
    keyed = keyed.sort_values(["score", "shard", "_id"], ascending=[ascending, True, True], kind="stable")
    return keyed.head(k).drop(columns="_id")


def _scored_rows(part, shard_name, id_col, caption_col):
    rows = _shard_rows(part, shard_name, id_col, caption_col)
    return rows[rows["score"].notna()]


def _first_pass(part, shard_name, id_col, caption_col, top):
    rows = _scored_rows(part, shard_name, id_col, caption_col)
    return ScoreStats.of(part), _ordered(rows, False, top), _ordered(rows, True, 2 * top), top


def _merge_first(a, b):
    top = a[3]
    return (a[0].merge(b[0]), _ordered(_concat(a[1], b[1]), False, top), _ordered(_concat(a[2], b[2]), True, 2 * top),
            top)


def _concat(a, b):
    return b if a.empty else a if b.empty else pd.concat([a, b], ignore_index=True)


def _threshold_pass(part, shard_name, id_col, caption_col, top, threshold, n_bins, lo, hi):
    scores = finite_scores(part)
    finite = scores[np.isfinite(scores)]
    counts = np.histogram(finite, bins=n_bins, range=(lo, hi))[0]
    rows = _scored_rows(part, shard_name, id_col, caption_col)
    above = _ordered(rows[rows["score"] >= threshold], True, 3 * top)
    below = _ordered(rows[rows["score"] < threshold], False, 3 * top)
    return counts, int((finite >= threshold).sum()), above, below, 3 * top


def _merge_threshold(a, b):
    k = a[4]
    return (a[0] + b[0], a[1] + b[1], _ordered(_concat(a[2], b[2]), True, k), _ordered(_concat(a[3], b[3]), False, k),
            k)
