"""An HTML report of a scored dataset: score histogram, best/worst images, errors.

    from nemo_aesthetic.report import write_report
    summary = write_report("/data/laion_subset", "report.html")   # also writes report.png

The report is one self-contained HTML file: the histogram is an embedded PNG (matplotlib), the
thumbnails are embedded JPEG data URIs, the styles and the one small script are inline, so it can
be mailed or attached to an issue and opens anywhere with no network. It shows headline counts
(rows, scored, errors, score quantiles), the histogram with the threshold marked, grids of the
top-N, bottom-N and around-the-threshold images with their captions and scores, and the errors
grouped by reason. The threshold is the one ``nemo-aesthetic filter`` would use (rows with
``score >= threshold`` are kept); by default it is the median score, and the report says so.

Only the metadata (read with :meth:`ImageTextPairDataset.from_webdataset`) and the images shown
are read: each tar that holds a shown image is streamed once, and the stream stops after its
last needed sample. The helpers (:func:`collect_scores`, :func:`select_rows`,
:func:`fetch_thumbnails`, :func:`image_grid`, :func:`histogram_png`) are public so a notebook
can show the same grids (``IPython.display.HTML(image_grid(...))``).

The page carries a tiny inline script that, once the page has loaded, records on ``<body>``
(``data-render-check``) whether every ``<img>`` decoded (``naturalWidth > 0``, and no
transparent pixel, which in these opaque images means a part that did not decode) and whether the
chart has ink; the tests open the report in headless Chromium and read it back.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor

logger = logging.getLogger(__name__)

SCORE_COLUMN = "aesthetic_score"
ERROR_COLUMN = "error"
THUMBNAIL_SIZE = 160

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
    """
    import dask
    import numpy as np
    import pandas as pd

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
    parts = [dask.delayed(_select_columns)(part, wanted)
             for part in dataset.metadata.to_delayed()]
    computed = dask.compute(*parts)
    from nemo_aesthetic import frames as _frames

    frames = []
    for shard, part in zip(dataset.shards, computed):
        frame = pd.DataFrame({
            "shard": shard.name,
            "id": _frames.column_values(part[dataset.id_col]),
            "caption": (_frames.column_values(part[caption_col]) if caption_col in part.columns
                        else [None] * len(part)),
            "score": part[SCORE_COLUMN].to_numpy(dtype=float, na_value=np.nan),
            "error": (_frames.column_values(part[ERROR_COLUMN]) if ERROR_COLUMN in part.columns
                      else [None] * len(part)),
        }, columns=["shard", "id", "caption", "score", "error"])
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["shard", "id", "caption", "score", "error"])
    return pd.concat(frames, ignore_index=True)


def _select_columns(part, columns):
    from nemo_aesthetic import frames

    return frames.to_host(part[columns])


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
    it (fewer on a side that has fewer), highest first. Ties break by shard then id, so the
    choice is deterministic.
    """
    import pandas as pd

    scored = frame[frame["score"].notna()].copy()
    scored["_id"] = scored["id"].astype(str)
    desc = scored.sort_values(["score", "shard", "_id"], ascending=[False, True, True], kind="stable")
    asc = scored.sort_values(["score", "shard", "_id"], ascending=[True, True, True], kind="stable")
    out = {"top": desc.head(top), "bottom": asc.head(top), "around": scored.head(0)}
    if threshold is not None and len(scored):
        above = asc[asc["score"] >= threshold]           # nearest first
        below = desc[desc["score"] < threshold]          # nearest first
        n_below = min(len(below), top // 2)
        n_above = min(len(above), top - n_below)
        n_below = min(len(below), top - n_above)
        around = pd.concat([above.head(n_above), below.head(n_below)])
        out["around"] = around.sort_values(["score", "shard", "_id"], ascending=[False, True, True], kind="stable")
    return {k: v.drop(columns="_id") for k, v in out.items()}


# ---------------------------------------------------------------------------------------- images
def thumbnail_data_uri(data: bytes, size: int = THUMBNAIL_SIZE) -> str:
    """Image bytes -> a ``data:image/jpeg;base64,...`` thumbnail at most ``size`` px on a side.

    Raises :class:`~nemo_aesthetic.image.preprocess.ImageDecodeError` if the bytes do not decode.
    """
    from nemo_aesthetic.image.preprocess import decode_image

    image = decode_image(data)
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def fetch_thumbnails(dataset, rows, size: int = THUMBNAIL_SIZE, max_threads: int = 8) -> dict:
    """Thumbnails of the given rows' images, read from the dataset's tars.

    ``rows`` is a frame with ``shard`` and ``id`` columns (as from :func:`collect_scores`). Each
    tar that holds a needed image is streamed once, up to its last needed sample; shards are read
    in parallel threads. Returns ``{(shard, id): data URI or None}``; a row whose image cannot be
    found or decoded maps to None (logged at warning level).
    """
    from nemo_aesthetic.datasets.shards import KeyIndex, ShardReadError, iter_samples
    from nemo_aesthetic.image.preprocess import ImageDecodeError, pick_image

    fs = dataset._fs_for(None)[0]
    by_name = {s.name: s for s in dataset.shards}
    needed: dict[str, list] = {}
    for shard, ident in zip(rows["shard"].tolist(), rows["id"].tolist()):  # plain Python values (KeyIndex)
        ids = needed.setdefault(shard, [])
        if ident not in ids:
            ids.append(ident)

    def one_shard(name):
        ids = needed[name]
        result = {(name, i): None for i in ids}
        shard = by_name.get(name)
        if shard is None or shard.tar is None:
            logger.warning("shard %s has no tar; %d image(s) not shown", name, len(ids))
            return result
        index = KeyIndex(ids)
        remaining = set(range(len(ids)))
        try:
            for sample in iter_samples(fs, shard.tar):
                pos = index.position(sample.key)
                if pos is None or pos not in remaining:
                    continue  # not needed, or a repeated key (the first sample is the one scored)
                remaining.discard(pos)
                image = pick_image(sample.members)
                if image is not None:
                    try:
                        result[(name, ids[pos])] = thumbnail_data_uri(image[1], size)
                    except ImageDecodeError as exc:
                        logger.warning("image %s of shard %s: %s", ids[pos], name, exc)
                if not remaining:
                    break  # stop streaming the tar: every needed image is found
        except ShardReadError as exc:
            logger.warning("%s", exc)
        if remaining:
            logger.warning("%d image(s) not found in %s (e.g. %s)", len(remaining), shard.tar,
                           ids[min(remaining)])
        return result

    thumbs: dict = {}
    if needed:
        with ThreadPoolExecutor(max(1, min(max_threads, len(needed)))) as pool:
            for part in pool.map(one_shard, sorted(needed)):
                thumbs.update(part)
    return thumbs


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
"""

# After load: did every <img> decode, and does the chart have ink? Recorded on <body> for tests.
_CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var checks = imgs.map(function (img) {
    var ok = img.complete && img.naturalWidth > 0, holes = 0;
    if (ok) {  // none of these images has transparency: transparent pixels are parts that did not decode
      try {
        var c = document.createElement("canvas");
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        var g = c.getContext("2d"); g.drawImage(img, 0, 0);
        var d = g.getImageData(0, 0, c.width, c.height).data;
        for (var i = 3; i < d.length; i += 4) { if (d[i] < 255) holes++; }
      } catch (e) { holes = -1; }
    }
    return {id: img.id || img.alt, ok: ok && holes === 0, holes: holes, w: img.naturalWidth, h: img.naturalHeight};
  });
  var chart = document.getElementById("histogram"), ink = 0;
  if (chart && chart.naturalWidth > 0) {
    try {
      var c = document.createElement("canvas");
      c.width = chart.naturalWidth; c.height = chart.naturalHeight;
      var g = c.getContext("2d"); g.drawImage(chart, 0, 0);
      var d = g.getImageData(0, 0, c.width, c.height).data;
      for (var i = 0; i < d.length; i += 4) { if (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200) ink++; }
    } catch (e) { ink = -1; }
  }
  var broken = checks.filter(function (c) { return !c.ok; }).length;
  document.body.setAttribute("data-render-check", JSON.stringify(
    {images: checks.length, broken: broken, chart_ink: ink, checks: checks}));
});
"""


def render_html(frame, selected: dict, thumbs: dict, chart_png: bytes, threshold: float | None,
                threshold_is_median: bool, title: str, top: int) -> str:
    """The report page (a string) from the pieces the other helpers compute."""
    import numpy as np

    from nemo_aesthetic import __version__

    rows = len(frame)
    scores = frame["score"].to_numpy(dtype=float)
    finite = scores[np.isfinite(scores)]
    scored = len(finite)
    errors = [e for e in frame["error"] if e is not None and e == e]
    unscored_no_error = int((~np.isfinite(scores) & frame["error"].isna().to_numpy()).sum())
    shards = frame["shard"].nunique() if rows else 0

    def stat(value, label):
        return f'<div class="stat"><b>{_esc(value)}</b><span>{_esc(label)}</span></div>'

    passing = int((finite >= threshold).sum()) if threshold is not None else 0
    cards = [stat(f"{rows:,}", "rows"), stat(f"{scored:,}", "scored"), stat(f"{len(errors):,}", "errors")]
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
        qs = [0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
        names = ["min", "p10", "p25", "median", "p75", "p90", "max"]
        values = np.quantile(finite, qs)
        quantiles = ("<table><tr>" + "".join(f'<th class="n">{n}</th>' for n in names) + '<th class="n">mean</th>'
                     + "</tr><tr>" + "".join(f'<td class="n">{v:.3f}</td>' for v in values)
                     + f'<td class="n">{finite.mean():.3f}</td></tr></table>')

    groups = error_groups(errors)
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
<div class="sub">nemo_aesthetic {_esc(__version__)} &middot; {_esc(generated)} &middot; column <code>{SCORE_COLUMN}</code>
(LAION aesthetic predictor, 0&ndash;10)</div>
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
<p class="note">{len(errors):,} row(s) have no score and a reason in their <code>error</code> column.</p>
{error_table}
"""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Aesthetic scores: {_esc(title)}</title><style>{_PAGE_CSS}{GRID_CSS}</style>"
            f"<script>{_CHECK_SCRIPT}</script></head><body>{body}</body></html>\n")


# ---------------------------------------------------------------------------------------- report
def histogram_path_for(out: str) -> str:
    """Where :func:`write_report` puts the PNG: the HTML's path with a ``.png`` suffix."""
    root, ext = os.path.splitext(out)
    return (root if ext.lower() in (".html", ".htm") else out) + ".png"


def write_report(dataset, out: str, threshold: float | None = None, top: int = 20,
                 id_col: str = "key", caption_col: str | None = "caption", histogram: str | None = None,
                 storage_options: dict | None = None, thumbnail_size: int = THUMBNAIL_SIZE) -> dict:
    """Write the HTML report of a scored dataset to ``out``, and its histogram as a PNG.

    Args:
        dataset: a dataset path (local or fsspec URL, read with ``from_webdataset``) or an
            :class:`~nemo_aesthetic.datasets.ImageTextPairDataset` whose metadata has
            ``aesthetic_score``.
        out: the HTML file to write (local path or fsspec URL); written atomically.
        threshold: the score to mark (rows with ``score >= threshold`` pass); default the median.
        top: how many images in each grid (top, bottom, around the threshold).
        histogram: where to write the histogram PNG (default: ``out`` with ``.png``; "" for none).

    Returns a summary dict: ``rows``, ``scored``, ``errors``, ``threshold``,
    ``threshold_is_median``, ``passing`` (scored rows >= threshold), ``images`` (thumbnails
    shown), ``missing_images``, ``html`` and ``png`` (the paths written).
    """
    import fsspec
    import numpy as np
    import pandas as pd

    from nemo_aesthetic.atomic import atomic_open
    from nemo_aesthetic.datasets import ImageTextPairDataset

    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    if isinstance(dataset, (str, os.PathLike)):
        path = os.fspath(dataset)
        dataset = ImageTextPairDataset.from_webdataset(path, id_col=id_col, storage_options=storage_options)
    title = str(dataset.path)
    if histogram is None:
        histogram = histogram_path_for(out)
    if histogram and os.path.abspath(histogram) == os.path.abspath(out):
        raise ValueError(f"the report and its histogram would both be {out}; give the report an .html name")
    fs, out_path = fsspec.core.url_to_fs(out)
    if fs.isdir(out_path):
        raise IsADirectoryError(f"the report's path is a directory, expected a file name such as report.html: {out}")

    logger.info("reading the metadata of %d shard(s) of %s", len(dataset.shards), title)
    frame = collect_scores(dataset, caption_col=caption_col)
    threshold_is_median = threshold is None
    if threshold is None:
        threshold = median_score(frame)
    elif not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    selected = select_rows(frame, top, threshold)
    needed = pd.concat([selected["top"], selected["bottom"], selected["around"]])
    logger.info("reading %d image(s) from %d tar(s)", len(needed.drop_duplicates(["shard", "id"])),
                needed["shard"].nunique())
    thumbs = fetch_thumbnails(dataset, needed, size=thumbnail_size)
    scores = frame["score"].to_numpy(dtype=float)
    chart = histogram_png(scores, threshold, "median" if threshold_is_median else "threshold")
    page = render_html(frame, selected, thumbs, chart, threshold, threshold_is_median, title, top)

    with atomic_open(fs, out_path, "wb") as f:
        f.write(page.encode("utf-8"))
    if histogram:
        hfs, hpath = fsspec.core.url_to_fs(histogram)
        with atomic_open(hfs, hpath, "wb") as f:
            f.write(chart)
    finite = scores[np.isfinite(scores)]
    summary = {
        "rows": len(frame),
        "scored": int(len(finite)),
        "errors": int(frame["error"].notna().sum()),
        "threshold": threshold,
        "threshold_is_median": threshold_is_median,
        "passing": int((finite >= threshold).sum()) if threshold is not None else 0,
        "images": sum(1 for v in thumbs.values() if v),
        "missing_images": sum(1 for v in thumbs.values() if not v),
        "html": out,
        "png": histogram or None,
    }
    logger.info("wrote %s (%d bytes)%s", out, len(page), f" and {histogram}" if histogram else "")
    return summary
