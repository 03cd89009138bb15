"""The score histogram, drawn with matplotlib's object API (no pyplot: no global state, no GUI)."""
from __future__ import annotations

import io

from nemo_aesthetic.report.data import SCORE_COLUMN


# ---------------------------------------------------------------------------------------- chart
def histogram_png(scores, threshold: float | None = None, threshold_label: str | None = None,
                  bins: int = 40, width: float = 8.0, height: float = 3.2, dpi: int = 100) -> bytes:
    """:func:`histogram_figure` as PNG bytes."""
    return figure_png(histogram_figure(scores, threshold, threshold_label, bins, width, height, dpi))


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def histogram_figure(scores, threshold: float | None = None, threshold_label: str | None = None,
                     bins: int = 40, width: float = 8.0, height: float = 3.2, dpi: int = 100):
    """A histogram of the finite ``scores`` (a matplotlib Figure), with the threshold as a red line.

    Counts are whole rows, so the y axis has integer ticks. The number of bins is numpy's "auto"
    rule (Sturges / Freedman-Diaconis, whichever is finer) kept within 10..``bins``: enough to
    show a shape on a small dataset, not so many that a large one looks like noise. The legend
    sits above the plot, never over the bars. (:func:`counts_figure` draws the same from counts
    computed elsewhere, as the report does on the workers.)
    """
    import numpy as np

    scores = np.asarray(scores, dtype=float)
    scores = scores[np.isfinite(scores)]
    if not len(scores):
        return counts_figure(None, threshold, threshold_label, 0, 0, width, height, dpi)
    p75, p25 = np.percentile(scores, [75, 25])
    n_bins, lo, hi = histogram_bins(len(scores), scores.min(), scores.max(), p25, p75, threshold, bins)
    kept = int((scores >= threshold).sum()) if threshold is not None else 0
    histogram = (np.histogram(scores, bins=n_bins, range=(lo, hi))[0], lo, hi)
    return counts_figure(histogram, threshold, threshold_label, len(scores), kept, width, height, dpi)


def histogram_bins(n: int, lowest: float, highest: float, p25: float, p75: float, threshold: float | None,
                   bins: int = 40) -> tuple[int, float, float]:
    """``(number of bins, lo, hi)`` of :func:`histogram_figure` for ``n`` finite scores with these
    extremes and quartiles: numpy's ``histogram_bin_edges(scores, "auto", range=(lo, hi))`` rule
    (the relaxed Freedman-Diaconis width, or Sturges' if finer), computed from the aggregates alone
    so that the report needs no score on the driver; kept within 10..``bins``."""
    import numpy as np

    lo, hi = float(lowest), float(highest)
    if threshold is not None:  # bins across the whole drawn axis, or a far threshold squashes them
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    ptp = np.subtract(highest, lowest)
    fd = 2.0 * np.subtract(p75, p25) * n ** (-1.0 / 3.0)
    width = min(max(fd, ptp / np.sqrt(n) / 2), ptp / (np.log2(n) + 1.0))
    auto = int(np.ceil((hi - lo) / width)) if width else 1
    return min(bins, max(10, auto)), lo, hi


def counts_figure(histogram, threshold: float | None, threshold_label: str | None, scored: int, kept: int,
                  width: float = 8.0, height: float = 3.2, dpi: int = 100):
    """:func:`histogram_figure` from ``histogram = (counts, lo, hi)`` (equal bins; None: nothing
    scored), ``scored`` rows of which ``kept`` are >= ``threshold``."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    if histogram is not None and scored:
        counts, lo, hi = histogram
        edges = np.linspace(lo, hi, len(counts) + 1)  # as np.histogram's: each left edge lands in its own bin
        ax.hist(edges[:-1], bins=edges, weights=counts, color="#4c72b0", edgecolor="white", linewidth=0.5)
        if threshold is not None:
            ax.axvline(threshold, color="#c44e52", linewidth=2,
                       label=f"{threshold_label or 'threshold'} {threshold:.3f}: {kept} of {scored} "
                             f"scored rows >= it")
            fig.legend(loc="outside upper left", fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no scored rows", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(SCORE_COLUMN)
    ax.set_ylabel("rows")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.spines[["top", "right"]].set_visible(False)
    return fig
