"""The report's HTML: one self-contained page (inline styles, data-URI images, no script)."""
from __future__ import annotations

import base64
import datetime
import html

from nemo_aesthetic.report.data import SCORE_COLUMN


# ---------------------------------------------------------------------------------------- html
def _esc(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return html.escape(str(value), quote=True)


def image_grid(rows, thumbs: dict, threshold: float | None = None, empty: str = "no rows",
               style: bool = False) -> str:
    """An HTML grid of the rows' thumbnails with caption, score, shard and id (all escaped).

    ``thumbs`` maps ``(shard, id)`` to a data URI (from :func:`fetch_thumbnails`); rows without
    one get a grey box saying so. With ``threshold``, each card says whether the row passes it.
    ``style=True`` prepends the grid's ``<style>`` (for showing it alone, e.g. in a notebook).
    """
    css = f"<style>{GRID_CSS}</style>" if style else ""
    if len(rows) == 0:
        return f'{css}<p class="na-empty">{_esc(empty)}</p>'
    cards = []
    for row in rows.itertuples(index=False):
        uri = thumbs.get((row.shard, row.id))
        if uri:
            picture = f'<img src="{uri}" alt="{_esc(row.id)}" loading="eager">'
        else:
            picture = '<div class="na-noimg">image not available</div>'
        badge = ""
        if threshold is not None:
            passes = row.score >= threshold
            badge = (f'<span class="na-badge {"keep" if passes else "drop"}">'
                     f'{"&ge;" if passes else "&lt;"} {threshold:.3f}</span>')
        caption = row.caption if isinstance(row.caption, str) and row.caption.strip() else None
        cards.append(
            '<figure class="na-card">' + picture +
            f'<figcaption><div class="na-score">{row.score:.3f} {badge}</div>'
            f'<div class="na-caption" title="{_esc(caption)}">'
            f'{_esc(caption) if caption else "<em>(no caption)</em>"}</div>'
            f'<div class="na-key">{_esc(row.shard)} / {_esc(row.id)}</div></figcaption></figure>')
    return css + '<div class="na-grid">' + "".join(cards) + "</div>"


#: Styles of :func:`image_grid` (prefixed class names, so they can sit inside a notebook page).
GRID_CSS = """
.na-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.na-card{margin:0;border:1px solid #ddd;border-radius:6px;padding:5px;background:#fafafa;color:#222}
.na-card img,.na-noimg{display:block;width:160px;height:160px;object-fit:contain;margin:0 auto;background:#eee}
.na-noimg{color:#888;font-size:.8em;display:flex;align-items:center;justify-content:center}
.na-card figcaption{font-size:.8em;margin-top:4px} .na-score{font-weight:bold}
.na-caption{display:-webkit-box;-webkit-line-clamp:3;-webkit-box-orient:vertical;overflow:hidden;margin:2px 0}
.na-key{color:#888;font-family:monospace;font-size:.9em} .na-empty{color:#888}
.na-badge{font-weight:normal;border-radius:3px;padding:0 4px;font-size:.9em}
.na-badge.keep{background:#dff0d8;color:#2d6a2d} .na-badge.drop{background:#f6dede;color:#8a2d2d}
"""

_PAGE_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:1.4em;margin:0 0 4px} h2{font-size:1.15em;margin:28px 0 8px;border-bottom:1px solid #ddd}
.sub{color:#666;font-size:.9em} .note{color:#555;font-size:.9em;margin:4px 0 8px}
table{border-collapse:collapse;font-size:.9em} td,th{padding:3px 10px;text-align:left;border-bottom:1px solid #eee}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:10px} .stat{border:1px solid #ddd;border-radius:6px;padding:8px 14px}
.stat b{display:block;font-size:1.4em} .stat span{color:#666;font-size:.85em}
img.chart{max-width:100%;height:auto}
.tiny{background:#fff3cd;border:2px solid #c9a227;border-radius:6px;padding:8px 12px;margin:8px 0;font-weight:bold}
"""

def render_html(data, thumbs: dict, chart_png: bytes, threshold_is_median: bool, title: str, top: int,
                provenance: dict | None = None, extra_sections: str = "") -> str:
    """The report page (a string) from the pieces the other helpers compute: ``data`` is
    :func:`~nemo_aesthetic.report.summary.summarise`'s (counts, quantiles and grids).

    ``extra_sections``: HTML appended after the errors (the near-duplicates of a dedup'ed dataset,
    :mod:`.duplicates`).

    ``provenance``: the scored files' ``nemo_aesthetic.*`` metadata (``datasets.provenance``); the
    model is named, and scores from ``--tiny``'s random model get a banner saying they mean nothing.
    """
    from nemo_aesthetic.datasets.provenance import MODEL_KEY, TINY_KEY

    provenance = provenance or {}
    banner = (f'<div class="tiny">NOT REAL SCORES: {_esc(provenance[TINY_KEY])}.</div>'
              if TINY_KEY in provenance else "")
    model = f" &middot; model <code>{_esc(provenance[MODEL_KEY])}</code>" if MODEL_KEY in provenance else ""
    from nemo_aesthetic import __version__

    stats, selected, threshold = data.stats, data.selected, data.threshold
    rows, scored, errors, unscored_no_error, shards = (stats.rows, stats.scored, stats.errors,
                                                       stats.unscored_no_error, stats.shards)

    def stat(value, label):
        return f'<div class="stat"><b>{_esc(value)}</b><span>{_esc(label)}</span></div>'

    passing = data.passing
    cards = [stat(f"{rows:,}", "rows"), stat(f"{scored:,}", "scored"), stat(f"{errors:,}", "errors")]
    if unscored_no_error:
        cards.append(stat(f"{unscored_no_error:,}", "no score, no error"))
    cards.append(stat(f"{shards:,}", "shards"))
    if threshold is not None:
        share = f" ({100 * passing / scored:.1f}% of scored)" if scored else ""
        cards.append(stat(f"{passing:,}", f"score >= {threshold:.3f}{share}"))

    if threshold is None:
        threshold_text = "No threshold: nothing is scored."
    elif threshold_is_median:
        threshold_text = (f"Threshold {threshold:.3f} is the <b>median score</b> (the default; pass "
                          "<code>--threshold T</code> to choose one). <code>nemo-aesthetic filter --threshold T</code> "
                          "keeps rows with score &ge; T.")
    else:
        threshold_text = (f"Threshold {threshold:.3f} (given). <code>nemo-aesthetic filter --threshold "
                          f"{threshold:g}</code> keeps rows with score &ge; it.")

    quantiles = ""
    if scored:
        names = ["min", "p10", "p25", "median", "p75", "p90", "max"]
        values = list(data.quantiles.values())
        quantiles = ("<table><tr>" + "".join(f'<th class="n">{n}</th>' for n in names) + '<th class="n">mean</th>'
                     + "</tr><tr>" + "".join(f'<td class="n">{v:.3f}</td>' for v in values)
                     + f'<td class="n">{stats.mean:.3f}</td></tr></table>')

    groups = stats.error_groups()
    if groups:
        error_table = ('<table><tr><th class="n">rows</th><th>reason</th><th>example</th></tr>' + "".join(
            f'<tr><td class="n">{count:,}</td><td>{_esc(name)}</td><td>{_esc(example)}</td></tr>'
            for name, count, example in groups) + "</table>")
    else:
        error_table = '<p class="na-empty">no errors</p>'

    missing_thumbs = sum(1 for v in thumbs.values() if v is None)
    thumbs_note = (f'<p class="note">{missing_thumbs} image(s) could not be read from the tars (see the log).</p>'
                   if missing_thumbs else "")
    chart_uri = "data:image/png;base64," + base64.b64encode(chart_png).decode("ascii")
    generated = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    n_top, n_bottom, n_around = (len(selected[k]) for k in ("top", "bottom", "around"))
    body = f"""
<h1>Aesthetic scores: {_esc(title)}</h1>
{banner}
<div class="sub">nemo_aesthetic {_esc(__version__)} &middot; {_esc(generated)} &middot; column <code>{SCORE_COLUMN}</code>
(LAION aesthetic predictor, 0&ndash;10){model}</div>
<h2>Summary</h2>
<div class="cards">{"".join(cards)}</div>
<p class="note">{threshold_text}</p>
{quantiles}
<h2>Score distribution</h2>
<img id="histogram" class="chart" alt="histogram of {SCORE_COLUMN}" src="{chart_uri}">
<h2>Top {n_top} (highest scores)</h2>
{thumbs_note}
{image_grid(selected["top"], thumbs, threshold, "no scored rows")}
<h2>Bottom {n_bottom} (lowest scores)</h2>
{image_grid(selected["bottom"], thumbs, threshold, "no scored rows")}
<h2>Around the threshold{f" {threshold:.3f}" if threshold is not None else ""} (the {n_around} nearest scores)</h2>
<p class="note">The rows a small change of threshold would keep or drop.</p>
{image_grid(selected["around"], thumbs, threshold, "no scored rows")}
<h2>Errors by reason</h2>
<p class="note">{errors:,} row(s) have no score and a reason in their <code>error</code> column.</p>
{error_table}
{extra_sections}
"""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Aesthetic scores: {_esc(title)}</title><style>{_PAGE_CSS}{GRID_CSS}</style>"
            f"</head><body>{body}</body></html>\n")
