"""The numbers a report shows: the scores read back from the metadata, the errors grouped by
reason, and which rows each image grid shows."""
from __future__ import annotations

import re

SCORE_COLUMN = "aesthetic_score"
ERROR_COLUMN = "error"

_SHARD_TAR = re.compile(r"\b[\w.-]+\.(tar|tar\.gz|tgz)\b")


# ---------------------------------------------------------------------------------------- errors
def reason_group(reason: str) -> str:
    """A short group for an error reason: its text before the first ':' or '(' (shard names blanked)."""
    head = re.split(r"[:(]", reason, maxsplit=1)[0].strip()
    return _SHARD_TAR.sub("<shard>.tar", head) or reason[:40]


def error_groups(reasons) -> list[tuple[str, int, str]]:
    """``(group, count, first example)`` for the error reasons, most frequent first."""
    groups: dict[str, list] = {}
    for reason in reasons:
        if reason is None or reason != reason:
            continue
        reason = str(reason)
        g = groups.setdefault(reason_group(reason), [0, reason])
        g[0] += 1
    return [(name, count, example)
            for name, (count, example) in sorted(groups.items(), key=lambda kv: (-kv[1][0], kv[0]))]


# ---------------------------------------------------------------------------------------- data
def collect_scores(dataset, caption_col: str | None = "caption"):
    """The rows of a scored dataset as one pandas frame: shard, id, caption, score, error.

    ``dataset`` is an :class:`~nemo_aesthetic.datasets.ImageTextPairDataset` whose metadata has
    ``aesthetic_score`` (read back after ``save_metadata``, not a lazy freshly embedded one, or
    the images are embedded again). Columns of the result: ``shard`` (the shard name), ``id``
    (the id column's values), ``caption`` (None where there is none), ``score`` (float, NaN where
    not scored) and ``error`` (None where no error).

    Every row comes to the driver: for a notebook on a small dataset. :func:`write_report` computes
    its numbers and grids on the workers instead (:func:`~nemo_aesthetic.report.summary.summarise`).
    """
    from nemo_aesthetic.engine.partitions import map_shards

    wanted = check_scored(dataset, caption_col)
    # One task per shard, each naming its own shard (a linear graph; see engine.partitions).
    rows = map_shards(_shard_rows, dataset.metadata[wanted], [s.name for s in dataset.shards], dataset.id_col,
                      caption_col, meta=_rows_meta(), label="report-rows")
    return rows.compute().reset_index(drop=True)


def check_scored(dataset, caption_col: str | None = "caption") -> list[str]:
    """The columns a report reads (id, score, caption and error where present); a ValueError if
    ``dataset`` has no scores."""
    columns = list(dataset.metadata.columns)
    if SCORE_COLUMN not in columns:
        raise ValueError(f"{dataset.path} has no {SCORE_COLUMN} column (columns: {', '.join(map(str, columns))}); "
                         "score it first (nemo-aesthetic score PATH, or an embedder with AestheticClassifier "
                         "followed by save_metadata)")
    wanted = [dataset.id_col, SCORE_COLUMN]
    if caption_col and caption_col in columns:
        wanted.append(caption_col)
    if ERROR_COLUMN in columns:
        wanted.append(ERROR_COLUMN)
    return wanted


_ROWS_META_COLUMNS = ["shard", "id", "caption", "score", "error"]


def _shard_rows(part, shard_name: str, id_col: str, caption_col: str | None):
    import numpy as np
    import pandas as pd

    from nemo_aesthetic import frames

    part = frames.to_host(part)
    return pd.DataFrame({
        "shard": [shard_name] * len(part),
        "id": frames.column_values(part[id_col]),
        "caption": (frames.column_values(part[caption_col]) if caption_col in part.columns
                    else [None] * len(part)),
        "score": part[SCORE_COLUMN].to_numpy(dtype=float, na_value=np.nan),
        "error": (frames.column_values(part[ERROR_COLUMN]) if ERROR_COLUMN in part.columns
                  else [None] * len(part)),
    }, columns=_ROWS_META_COLUMNS)


def _rows_meta():
    import pandas as pd

    return pd.DataFrame({"shard": pd.Series([], dtype=object), "id": pd.Series([], dtype=object),
                         "caption": pd.Series([], dtype=object), "score": pd.Series([], dtype=float),
                         "error": pd.Series([], dtype=object)})


def median_score(frame) -> float | None:
    """The median of the scored rows, None if nothing is scored."""
    import numpy as np

    scores = frame["score"].to_numpy(dtype=float)
    scores = scores[np.isfinite(scores)]
    return float(np.median(scores)) if len(scores) else None


def select_rows(frame, top: int, threshold: float | None) -> dict:
    """The rows the report shows: ``{"top", "bottom", "around"}`` (pandas frames of scored rows).

    ``top``: the ``top`` highest scores, best first; ``bottom``: the ``top`` lowest, worst first;
    ``around``: up to ``top`` rows nearest the threshold, half just below it and half at or above
    it (fewer on a side that has fewer), highest first. No row is in two grids: on a small
    dataset ``bottom`` takes from the rows ``top`` left, and ``around`` from those both left (so
    a grid may be short or empty rather than repeat images). Ties break by shard then id, so the
    choice is deterministic.
    """
    import pandas as pd

    scored = frame[frame["score"].notna()].copy()
    scored["_id"] = scored["id"].astype(str)
    desc = scored.sort_values(["score", "shard", "_id"], ascending=[False, True, True], kind="stable")
    out = {"top": desc.head(top)}
    desc = desc.iloc[len(out["top"]):]                 # what is left, highest first
    asc = desc.sort_values(["score", "shard", "_id"], ascending=[True, True, True], kind="stable")
    out["bottom"] = asc.head(top)
    asc = asc.iloc[len(out["bottom"]):]                # what is left, lowest first
    desc = desc[~desc.index.isin(out["bottom"].index)]
    out["around"] = scored.head(0)
    if threshold is not None and len(asc):
        above = asc[asc["score"] >= threshold]           # nearest first
        below = desc[desc["score"] < threshold]          # nearest first
        n_below = min(len(below), top // 2)
        n_above = min(len(above), top - n_below)
        n_below = min(len(below), top - n_above)
        around = pd.concat([above.head(n_above), below.head(n_below)])
        out["around"] = around.sort_values(["score", "shard", "_id"], ascending=[False, True, True], kind="stable")
    return {k: v.drop(columns="_id") for k, v in out.items()}
