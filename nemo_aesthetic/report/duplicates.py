"""The report's near-duplicates section: pairs of pictures side by side with their similarity, on
both sides of the eps ``nemo-aesthetic dedup`` used, so a user can choose eps by looking.

Only a few pairs reach the client: each shard's candidates are chosen on its worker and Dask's
``nsmallest``/``nlargest`` reductions keep the ``limit`` pairs nearest the cut over the whole
dataset; then one pass over the id column finds the shard of each pair's other row (a handful of
ids), and only those images are read from the tars. Nothing is gathered per row of the dataset.
"""
from __future__ import annotations

import json

import pandas as pd

from nemo_aesthetic.dedup.marking import DUPLICATE_OF, NEAREST, SIMILARITY
from nemo_aesthetic.report.page import _esc

#: Parquet key-value metadata ``nemo-aesthetic dedup`` records (= cli.dedup.DEDUP_KEY).
DEDUP_KEY = "nemo_aesthetic.dedup"
#: Pairs shown on each side of the cut at most (the report's --top, capped).
MAX_PAIRS = 12
PAIR_COLUMNS = ["shard", "id", "nearest_shard", "nearest_id", "similarity"]

PAIRS_CSS = """
.na-pairs{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:10px}
.na-pair{display:flex;gap:6px;align-items:flex-start;border:1px solid #ddd;border-radius:6px;padding:5px;background:#fafafa}
.na-pair figure{margin:0} .na-pair img,.na-pair .na-noimg{width:160px;height:160px;object-fit:contain;background:#eee}
.na-pair .na-sim{font-weight:bold;font-size:.9em;writing-mode:vertical-rl;align-self:center}
"""


def is_deduplicated(dataset) -> bool:
    return DUPLICATE_OF in dataset.metadata.columns and SIMILARITY in dataset.metadata.columns


def closest_pairs(dataset, limit: int = 8) -> dict[str, pd.DataFrame]:
    """``{"marked": ..., "kept": ...}``: the ``limit`` marked duplicates least similar to the row
    they duplicate (the first a smaller eps would keep), and the ``limit`` kept rows most similar
    to their nearest row (the first a larger eps would drop); frames of :data:`PAIR_COLUMNS`."""
    import dask

    from nemo_aesthetic.engine.partitions import map_shards

    id_col = dataset.id_col
    meta = pd.DataFrame({"shard": pd.Series([], dtype=object), "id": pd.Series([], dtype=object),
                         "nearest_id": pd.Series([], dtype=object), "similarity": pd.Series([], dtype="float64"),
                         "marked": pd.Series([], dtype=bool)})
    candidates = map_shards(_shard_candidates, dataset.metadata[[id_col, DUPLICATE_OF, NEAREST, SIMILARITY]],
                            [s.name for s in dataset.shards], id_col, limit, meta=meta,
                            label="report-duplicate-candidates")
    marked, kept = dask.compute(candidates[candidates["marked"]].nsmallest(limit, "similarity"),
                                candidates[~candidates["marked"]].nlargest(limit, "similarity"))
    wanted = sorted({*marked["nearest_id"], *kept["nearest_id"]}, key=str)
    where = map_shards(_locate, dataset.metadata[[id_col]], [s.name for s in dataset.shards], id_col, wanted,
                       meta=pd.DataFrame({"nearest_shard": pd.Series([], dtype=object),
                                          "nearest_id": pd.Series([], dtype=object)}),
                       label="report-locate-nearest").compute() if wanted else None
    out = {}
    for name, frame in (("marked", marked), ("kept", kept)):
        frame = frame.reset_index(drop=True)
        if where is not None and len(frame):
            frame = frame.merge(where.drop_duplicates("nearest_id"), on="nearest_id", how="left")
        else:
            frame = frame.assign(nearest_shard=None)
        out[name] = frame[PAIR_COLUMNS]
    return out


def _shard_candidates(part, shard: str, id_col: str, limit: int):
    """This shard's ``limit`` least similar duplicates and ``limit`` most similar kept rows."""
    compared = part[part[SIMILARITY].notna()]
    marked = compared[DUPLICATE_OF].notna()
    picked = pd.concat([compared[marked].nsmallest(limit, SIMILARITY), compared[~marked].nlargest(limit, SIMILARITY)])
    return pd.DataFrame({"shard": shard, "id": picked[id_col].astype(object).to_numpy(),
                         "nearest_id": picked[NEAREST].astype(object).to_numpy(),
                         "similarity": picked[SIMILARITY].astype("float64").to_numpy(),
                         "marked": picked[DUPLICATE_OF].notna().to_numpy(dtype=bool)})


def _locate(part, shard: str, id_col: str, ids: list):
    found = part[part[id_col].isin(ids)]
    return pd.DataFrame({"nearest_shard": shard, "nearest_id": found[id_col].astype(object).to_numpy()})


def rows_to_show(pairs: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The ``shard``/``id`` rows whose images the pairs show (for ``fetch_thumbnails``)."""
    frames = []
    for frame in pairs.values():
        frames.append(frame[["shard", "id"]])
        other = frame[frame["nearest_shard"].notna()]
        frames.append(pd.DataFrame({"shard": other["nearest_shard"], "id": other["nearest_id"]}))
    return pd.concat(frames, ignore_index=True).drop_duplicates() if frames else pd.DataFrame(columns=["shard", "id"])


def section_html(pairs: dict[str, pd.DataFrame], thumbs: dict, provenance: dict) -> str:
    """The section's HTML: the eps used, then the two lists of pairs (all text escaped)."""
    settings = json.loads(provenance.get(DEDUP_KEY, "{}") or "{}")
    eps = settings.get("eps")
    cut = (f"<code>nemo-aesthetic dedup</code> marked rows with similarity &ge; {1 - eps:.6g} "
           f"(<code>--eps {eps:g}</code>) as duplicates of the row on their right." if eps is not None else
           "Rows were marked as duplicates of the row on their right.")
    return f"""
<h2 id="duplicates">Near-duplicates</h2>
<style>{PAIRS_CSS}</style>
<p class="note">{cut} Each pair: the row, its most similar row in its k-means cluster, their cosine similarity.
A smaller eps keeps the first pairs below; a larger one drops the pairs after them.</p>
<h3>Marked duplicates, least similar first ({len(pairs["marked"])})</h3>
{_pairs(pairs["marked"], thumbs, "no row is marked as a duplicate")}
<h3>Kept rows most similar to another ({len(pairs["kept"])})</h3>
{_pairs(pairs["kept"], thumbs, "no compared row is kept")}
"""


def _pairs(frame, thumbs: dict, empty: str) -> str:
    if len(frame) == 0:
        return f'<p class="na-empty">{_esc(empty)}</p>'
    cards = [f'<div class="na-pair">{_picture(thumbs, row.shard, row.id)}'
             f'<span class="na-sim">{row.similarity:.6f}</span>'
             f'{_picture(thumbs, row.nearest_shard, row.nearest_id)}</div>' for row in frame.itertuples(index=False)]
    return '<div class="na-pairs">' + "".join(cards) + "</div>"


def _picture(thumbs: dict, shard, ident) -> str:
    uri = thumbs.get((shard, ident))
    picture = (f'<img src="{uri}" alt="{_esc(ident)}" loading="eager">' if uri
               else '<div class="na-noimg">image not available</div>')
    return f'<figure>{picture}<figcaption class="na-key">{_esc(shard)} / {_esc(ident)}</figcaption></figure>'
