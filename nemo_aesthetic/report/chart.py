"""The score histogram, drawn with matplotlib's object API (no pyplot: no global state, no GUI)."""
from __future__ import annotations

import io
import math

from nemo_aesthetic.report.data import SCORE_COLUMN


# ---------------------------------------------------------------------------------------- chart
def histogram_png(scores, threshold: float | None = None, threshold_label: str | None = None,
                  bins: int = 40, width: float = 8.0, height: float = 3.2, dpi: int = 100) -> bytes:
    """A histogram of the finite ``scores`` as PNG bytes, with the threshold as a red line."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    scores = np.asarray(scores, dtype=float)
    scores = scores[np.isfinite(scores)]
    fig = Figure(figsize=(width, height), dpi=dpi)
    ax = fig.add_subplot()
    if len(scores):
        lo, hi = float(scores.min()), float(scores.max())
        if threshold is not None:  # bins across the whole drawn axis, or a far threshold squashes them
            lo, hi = min(lo, threshold), max(hi, threshold)
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5, hi + 0.5
        ax.hist(scores, bins=min(bins, max(5, int(math.sqrt(len(scores))) * 2)), range=(lo, hi),
                color="#4c72b0", edgecolor="white", linewidth=0.5)
        if threshold is not None:
            kept = int((scores >= threshold).sum())
            ax.axvline(threshold, color="#c44e52", linewidth=2,
                       label=f"{threshold_label or 'threshold'} {threshold:.3f}: {kept} of {len(scores)} "
                             f"scored rows >= it")
            ax.legend(loc="best", fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no scored rows", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(SCORE_COLUMN)
    ax.set_ylabel("rows")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
