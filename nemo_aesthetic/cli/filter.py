"""``nemo-aesthetic filter PATH --threshold T | --top-percent P | --top-k N [--drop-duplicates] --out DIR``: a
new WebDataset of the rows scoring >= T, or of the best P % / N rows of the whole dataset (exact, computed
on Dask by ``ImageTextPairDataset.select_top`` without gathering the scores in one place); with
``--drop-duplicates`` (alone or with one of those) without the rows ``dedup`` marked ``duplicate_of``."""
from __future__ import annotations

import contextlib
import logging
import sys

from nemo_aesthetic.cli import common
from nemo_aesthetic.cli.options import (FILTER_COLUMN, PROG, SCORE_COLUMN, UsageError, add_id_option, add_quiet_option,
                                        positive_int, score_number)

DUPLICATE_OF = "duplicate_of"  # = nemo_aesthetic.dedup.marking.DUPLICATE_OF (not imported: --help stays quick)
UNIQUE_SCORE = "_score_of_unique_rows"

logger = logging.getLogger("nemo_aesthetic.cli")


def add_parser(sub) -> None:
    filt = sub.add_parser(
        "filter", help="write a new WebDataset with the rows whose aesthetic_score >= T, or the top P %% / N",
        description="Write the samples of PATH whose aesthetic_score >= THRESHOLD, or the best --top-percent P "
                    "% (of the scored rows, rounded up) or --top-k N rows of the whole dataset, as a new, "
                    "resharded WebDataset in --out (tars + Parquet, new keys). PATH's metadata must already have "
                    "aesthetic_score (run 'score' first, in place). Rows without a score are not kept; of rows "
                    "tied at the cut, the first in shard order are kept, so exactly N rows are selected.")
    filt.add_argument("path", metavar="PATH", help="scored dataset directory (tars + Parquet with aesthetic_score)")
    how = filt.add_mutually_exclusive_group()
    how.add_argument("--threshold", metavar="T", type=score_number, help="keep rows with score >= T")
    how.add_argument("--top-percent", metavar="P", type=_percent, help="keep the best P %% of the scored rows")
    how.add_argument("--top-k", metavar="N", type=positive_int, help="keep the best N rows")
    filt.add_argument("--drop-duplicates", action="store_true",
                      help="leave out the rows 'dedup' marked as near-duplicates (duplicate_of); alone, or "
                           "before --threshold/--top-percent/--top-k (the top rows are then chosen among the "
                           "rows kept)")
    filt.add_argument("--out", metavar="DIR", required=True, help="output directory (not PATH)")
    filt.add_argument("--mode", choices=("error", "overwrite", "resume"), default="error",
                      help="if --out already holds shards: error (default), overwrite them, or resume an "
                           "interrupted run of the same filter (keeps complete output shards)")
    filt.add_argument("--samples-per-shard", metavar="N", type=positive_int, default=10000,
                      help="samples per output shard (default: 10000)")
    add_id_option(filt)
    add_quiet_option(filt, "no log lines and no progress bar")
    filt.set_defaults(func=run, filter_parser=filt)


def _percent(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"must be within (0, 100], got {value:g}")
    return value


def run(args) -> int:
    if args.threshold is None and args.top_percent is None and args.top_k is None and not args.drop_duplicates:
        args.filter_parser.error("one of the arguments --threshold --top-percent --top-k --drop-duplicates "
                                 "is required")  # (argparse's words: groups cannot say "this, and/or that")
    common.check_dataset_path(args.path)
    import dask

    from nemo_aesthetic.datasets import ImageTextPairDataset

    dataset = ImageTextPairDataset.from_webdataset(args.path, id_col=args.id_col)
    columns = list(dataset.metadata.columns)
    if args.drop_duplicates and DUPLICATE_OF not in columns:
        raise UsageError(f"{args.path} has no {DUPLICATE_OF} column: it was never dedup'ed; run "
                         f"'{PROG} dedup {args.path} --eps E' first")
    by_score = not (args.drop_duplicates and args.threshold is None and args.top_percent is None
                    and args.top_k is None)
    if by_score and SCORE_COLUMN not in columns:
        raise UsageError(f"{args.path} has no {SCORE_COLUMN} column (columns: {', '.join(map(str, columns))}); "
                         f"run '{PROG} score {args.path}' first")
    if all(s.tar is None and s.source is None for s in dataset.shards):
        raise UsageError(f"{args.path} has metadata but no tar files; run filter on the directory that holds "
                         "the tars and the scored Parquet (score in place, without --out)")
    _check_out(args)
    meta = dataset.metadata
    unique = meta[DUPLICATE_OF].isna() if args.drop_duplicates else None
    score = meta[SCORE_COLUMN] if by_score else None
    if not by_score:
        dataset.metadata = meta.assign(**{FILTER_COLUMN: unique})
        rule = "not a duplicate"
    elif args.threshold is None:
        if unique is not None:  # the top rows among those kept: a duplicate takes no place
            dataset.metadata = meta.assign(**{UNIQUE_SCORE: meta[SCORE_COLUMN].where(unique)})
        selected = dataset.select_top(args.top_percent, args.top_k, UNIQUE_SCORE if unique is not None
                                      else SCORE_COLUMN, FILTER_COLUMN)
        rule = (f"top {args.top_percent:g} %" if args.top_k is None else f"top {args.top_k}") + (
            f", score >= {selected['threshold']:.4f}" if selected["threshold"] is not None else "")
        if unique is not None:
            dataset.metadata = dataset.metadata.drop(columns=[UNIQUE_SCORE])
    else:
        keep = (score >= args.threshold).fillna(False)
        dataset.metadata = meta.assign(**{FILTER_COLUMN: keep & unique if unique is not None else keep})
        rule = f"score >= {args.threshold:g}"
    if args.drop_duplicates and by_score:
        rule += ", no duplicates"
    duplicates = unique.size - unique.sum() if unique is not None else 0
    context = contextlib.nullcontext()
    if not args.quiet and sys.stderr.isatty():
        from dask.diagnostics import ProgressBar

        context = ProgressBar(out=sys.stderr)
    with context:
        if by_score:
            rows, kept_rows, missing_scores, lowest, highest, duplicates = dask.compute(
                score.size, dataset.metadata[FILTER_COLUMN].sum(), score.isna().sum(), score.min(), score.max(),
                duplicates)
            _warn_about_the_scale(args, lowest, highest, int(rows) - int(missing_scores))
        else:
            rows, kept_rows, duplicates = dask.compute(unique.size, dataset.metadata[FILTER_COLUMN].sum(), duplicates)
            missing_scores = 0
        result = {"written": 0, "shards": 0, "missing": []}
        if kept_rows or _has_old_shards(args):  # (overwrite: old shards must go even if nothing is kept)
            logger.info("writing the %d row(s) with %s to %s", int(kept_rows), rule, args.out)
            result = dataset.to_webdataset(args.out, FILTER_COLUMN, samples_per_shard=args.samples_per_shard,
                                           mode=args.mode)
    rows, kept_rows, missing_scores, duplicates = int(rows), int(kept_rows), int(missing_scores), int(duplicates)
    dropped = rows - kept_rows - missing_scores
    if args.drop_duplicates:
        print(f"rows: {rows}   kept: {result['written']} ({rule})   duplicates dropped: {duplicates}   "
              f"below: {max(dropped - duplicates, 0)}   missing: {missing_scores} (no score)")
    else:
        print(f"rows: {rows}   kept: {result['written']} ({rule})   dropped: {dropped} (below)   "
              f"missing: {missing_scores} (no score)")
    if result["missing"]:
        print(f"  {len(result['missing'])} kept row(s) had no image in their tar and were not written, "
              f"e.g. {result['missing'][:3]}")
    if result["shards"]:
        print(f"wrote {result['written']} samples in {result['shards']} shard(s) to {args.out}")
    else:
        print(f"no row is kept ({rule}): nothing written to {args.out}")
    return 0


def _warn_about_the_scale(args, lowest, highest, scored: int) -> None:
    """``--threshold`` that keeps every scored row or none is most likely on the wrong scale: say so."""
    from nemo_aesthetic.image.classifiers.aesthetic import threshold_warning

    if args.threshold is None or not scored:
        return
    warning = threshold_warning(args.threshold, "--threshold", float(lowest), float(highest))
    if warning:
        print(f"{PROG}: warning: {warning}", file=sys.stderr, flush=True)


def _has_old_shards(args) -> bool:
    from nemo_aesthetic.datasets.shards import discover_shards

    fs, out = common.fs_root(args.out)
    return fs.isdir(out) and bool(discover_shards(fs, out))


def _check_out(args) -> None:
    """The library's refusals, said in the command's terms (options, not keyword arguments)."""
    from nemo_aesthetic.datasets.shards import discover_shards

    fs, out = common.fs_root(args.out)
    _, src = common.fs_root(args.path)
    if out == src:
        raise UsageError(f"--out is PATH ({args.out}); filter writes a new dataset: choose another directory")
    existing = discover_shards(fs, out) if fs.isdir(out) else []
    if existing and args.mode == "error":
        raise UsageError(f"--out {args.out} already holds {len(existing)} shard(s); add --mode overwrite to "
                         "replace them or --mode resume to finish an interrupted run")
