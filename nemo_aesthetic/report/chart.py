"""The score histogram, drawn with matplotlib's object API (no pyplot: no global state, no GUI)."""
from __future__ import annotations

import io

from nemo_aesthetic.report.data import SCORE_COLUMN


# ---------------------------------------------------------------------------------------- chart
def histogram_png(scores, threshold: float | None = None, threshold_label: str | None = None,
                  bins: int = 40, width: float = 8.0, height: float = 3.2, dpi: int = 100) -> bytes:
    """:func:`histogram_figure` as PNG bytes."""
    buf = io.BytesIO()
    histogram_figure(scores, threshold, threshold_label, bins, width, height, dpi).savefig(buf, format="png")
    return buf.getvalue()


def histogram_figure(scores, threshold: float | None = None, threshold_label: str | None = None,
                     bins: int = 40, width: float = 8.0, height: float = 3.2, dpi: int = 100):
    """A histogram of the finite ``scores`` (a matplotlib Figure), with the threshold as a red line.

    Counts are whole rows, so the y axis has integer ticks. The number of bins is numpy's "auto"
    rule (Sturges / Freedman-Diaconis, whichever is finer) kept within 10..``bins``: enough to
    show a shape on a small dataset, not so many that a large one looks like noise. The legend
    sits above the plot, never over the bars.
    """
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    from matplotlib.ticker import MaxNLocator

    scores = np.asarray(scores, dtype=float)
    scores = scores[np.isfinite(scores)]
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    if len(scores):
        lo, hi = float(scores.min()), float(scores.max())
        if threshold is not None:  # bins across the whole drawn axis, or a far threshold squashes them
            lo, hi = min(lo, threshold), max(hi, threshold)
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5, hi + 0.5
        n_bins = min(bins, max(10, len(np.histogram_bin_edges(scores, bins="auto", range=(lo, hi))) - 1))
        ax.hist(scores, bins=n_bins, range=(lo, hi), color="#4c72b0", edgecolor="white", linewidth=0.5)
        if threshold is not None:
            kept = int((scores >= threshold).sum())
            ax.axvline(threshold, color="#c44e52", linewidth=2,
                       label=f"{threshold_label or 'threshold'} {threshold:.3f}: {kept} of {len(scores)} "
                             f"scored rows >= it")
            fig.legend(loc="outside upper left", fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no scored rows", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(SCORE_COLUMN)
    ax.set_ylabel("rows")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.spines[["top", "right"]].set_visible(False)
    return fig
