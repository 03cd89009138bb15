"""An HTML report of a scored dataset: score histogram, best/worst images, errors.

    from nemo_aesthetic.report import write_report
    summary = write_report("/data/laion_subset", "report.html")   # also writes report.png

The report is one self-contained HTML file: the histogram is an embedded PNG (matplotlib), the
thumbnails are embedded JPEG data URIs and the styles are inline (no script), so it can be mailed
or attached to an issue and opens anywhere with no network. It shows headline counts
(rows, scored, errors, score quantiles), the histogram with the threshold marked, grids of the
top-N, bottom-N and around-the-threshold images with their captions and scores, and the errors
grouped by reason. The threshold is the one ``nemo-aesthetic filter`` would use (rows with
``score >= threshold`` are kept); by default it is the median score, and the report says so.

Only the metadata's id, caption, score and error columns (read with
:meth:`ImageTextPairDataset.from_webdataset`) and the images shown are read: the numbers and the
grids' rows are computed on the workers (:func:`summarise`: nothing per row reaches the driver,
the quantiles and histogram are still exact), and each tar that holds a shown image is streamed
once, the stream stopping after its last needed sample. The helpers (:func:`collect_scores`, :func:`select_rows`,
:func:`fetch_thumbnails`, :func:`image_grid`, :func:`histogram_png`) are public so a notebook
can show the same grids (``IPython.display.HTML(image_grid(...))``).
"""
from __future__ import annotations

import logging
import math
import os

from nemo_aesthetic.report import duplicates
from nemo_aesthetic.report.chart import counts_figure, figure_png, histogram_png
from nemo_aesthetic.report.data import (ERROR_COLUMN, SCORE_COLUMN, collect_scores, error_groups, median_score,
                                        reason_group, select_rows)
from nemo_aesthetic.report.images import THUMBNAIL_SIZE, fetch_thumbnails, thumbnail_data_uri
from nemo_aesthetic.report.page import GRID_CSS, image_grid, render_html
from nemo_aesthetic.report.summary import ReportData, summarise

__all__ = ["write_report", "histogram_path_for", "summarise", "ReportData", "collect_scores", "select_rows",
           "median_score",
           "fetch_thumbnails", "thumbnail_data_uri", "image_grid", "histogram_png", "render_html",
           "reason_group", "error_groups", "GRID_CSS", "SCORE_COLUMN", "ERROR_COLUMN", "THUMBNAIL_SIZE"]

logger = logging.getLogger(__name__)


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
    ``threshold_is_median``, ``passing`` (scored rows >= threshold), ``lowest`` and ``highest``
    (scores; None if none), ``images`` (thumbnails
    shown), ``missing_images``, ``html`` and ``png`` (the paths written), ``tiny`` (scored with
    ``--tiny``'s random model: the page says so in a banner), and, where ``nemo-aesthetic dedup``
    marked the dataset, ``duplicate_pairs`` (the pairs its near-duplicates section shows).
    """
    import fsspec
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

    logger.info("summarising the metadata of %d shard(s) of %s", len(dataset.shards), title)
    threshold_is_median = threshold is None
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    data = summarise(dataset, top, threshold, caption_col=caption_col)
    threshold, selected, stats = data.threshold, data.selected, data.stats
    needed = pd.concat([selected["top"], selected["bottom"], selected["around"]])
    logger.info("reading %d image(s) from %d tar(s)", len(needed.drop_duplicates(["shard", "id"])),
                needed["shard"].nunique())
    thumbs = fetch_thumbnails(dataset, needed, size=thumbnail_size)
    chart = figure_png(counts_figure(data.histogram, threshold, "median" if threshold_is_median else "threshold",
                                     stats.scored, data.passing))
    from nemo_aesthetic.datasets.provenance import TINY_KEY, file_metadata

    notes = file_metadata(dataset._fs_for(None)[0], dataset.shards[0].parquet) if dataset.shards else {}
    pairs = None
    if duplicates.is_deduplicated(dataset):  # marked by nemo-aesthetic dedup: show the pairs nearest its eps
        pairs = duplicates.closest_pairs(dataset, limit=min(top, duplicates.MAX_PAIRS))
        thumbs.update(fetch_thumbnails(dataset, duplicates.rows_to_show(pairs), size=thumbnail_size))
    page = render_html(data, thumbs, chart, threshold_is_median, title, top, notes,
                       extra_sections=duplicates.section_html(pairs, thumbs, notes) if pairs else "")

    with atomic_open(fs, out_path, "wb") as f:
        f.write(page.encode("utf-8"))
    if histogram:
        hfs, hpath = fsspec.core.url_to_fs(histogram)
        with atomic_open(hfs, hpath, "wb") as f:
            f.write(chart)
    summary = {
        "rows": stats.rows,
        "scored": stats.scored,
        "errors": stats.errors,
        "threshold": threshold,
        "threshold_is_median": threshold_is_median,
        "passing": data.passing,
        "lowest": stats.lowest,
        "highest": stats.highest,
        "images": sum(1 for v in thumbs.values() if v),
        "missing_images": sum(1 for v in thumbs.values() if not v),
        "html": out,
        "png": histogram or None,
        "tiny": TINY_KEY in notes,
    }
    if pairs:
        summary["duplicate_pairs"] = sum(len(f) for f in pairs.values())
    logger.info("wrote %s (%d bytes)%s", out, len(page), f" and {histogram}" if histogram else "")
    return summary
