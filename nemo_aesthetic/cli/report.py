"""``nemo-aesthetic report PATH``: one self-contained HTML page about a scored dataset."""
from __future__ import annotations

import math
import os
import sys

from nemo_aesthetic.cli import common
from nemo_aesthetic.cli.options import PROG, UsageError, add_id_option, add_quiet_option, positive_int


def add_parser(sub) -> None:
    rep = sub.add_parser(
        "report", help="write an HTML report of a scored dataset: histogram, best/worst images, errors",
        description="Write one self-contained HTML file (images and chart embedded, no network needed to view "
                    "it) about PATH's scores: rows, scored, errors and score quantiles; a histogram with the "
                    "threshold marked; the top-N, bottom-N and around-the-threshold images with captions and "
                    "scores; the errors grouped by reason. The histogram is also written as a PNG next to the "
                    "HTML (report.html -> report.png). PATH's metadata must have aesthetic_score (run 'score' "
                    "first); only the images shown are read from the tars.")
    rep.add_argument("path", metavar="PATH", help="scored dataset directory (tars + Parquet with aesthetic_score)")
    rep.add_argument("--out", metavar="FILE", default="report.html",
                     help="the HTML file to write (default: ./report.html; the PNG goes beside it)")
    rep.add_argument("--threshold", metavar="T", type=float, default=None,
                     help="the score to mark, as 'filter --threshold T' would keep >= T (default: the median score)")
    rep.add_argument("--top", metavar="N", type=positive_int, default=20,
                     help="images in each grid: top N, bottom N, N around the threshold (default: 20)")
    add_id_option(rep)
    add_quiet_option(rep, "no log lines")
    rep.set_defaults(func=run)


def run(args) -> int:
    common.check_dataset_path(args.path)
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise UsageError(f"--threshold must be a finite number, not {args.threshold}")
    from nemo_aesthetic import report

    if os.path.isdir(args.out):
        raise UsageError(f"--out is a directory, expected a file name such as report.html: {args.out}")
    if args.out.lower().endswith(".png"):
        raise UsageError(f"--out is the HTML file (its histogram goes beside it as .png): {args.out}")
    s = report.write_report(args.path, args.out, threshold=args.threshold, top=args.top, id_col=args.id_col)
    if s["tiny"]:
        print(f"NOTE: this dataset was {common.TINY_NOTE}; the report says so.")
    print(f"rows: {s['rows']}   scored: {s['scored']}   errors: {s['errors']}")
    if s["threshold"] is not None:
        how = "the median score; pass --threshold to choose" if s["threshold_is_median"] else "given"
        print(f"threshold: {s['threshold']:.3f} ({how}): {s['passing']} of {s['scored']} scored rows >= it")
        if not s["threshold_is_median"] and s["scored"]:
            from nemo_aesthetic.image.classifiers.aesthetic import threshold_warning

            warning = threshold_warning(s["threshold"], "--threshold", s["lowest"], s["highest"])
            if warning:
                print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if s["missing_images"]:
        print(f"  {s['missing_images']} image(s) could not be read from the tars and show as a grey box")
    print(f"report written to {s['html']} (histogram also in {s['png']})")
    return 0
