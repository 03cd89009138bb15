"""``nemo-aesthetic filter PATH --threshold T --out DIR``: a new WebDataset of the rows scoring >= T."""
from __future__ import annotations

import contextlib
import logging
import sys

from nemo_aesthetic.cli import common
from nemo_aesthetic.cli.options import (FILTER_COLUMN, PROG, SCORE_COLUMN, UsageError, add_quiet_option,
                                        positive_int)

logger = logging.getLogger("nemo_aesthetic.cli")


def add_parser(sub) -> None:
    filt = sub.add_parser(
        "filter", help="write a new WebDataset with the rows whose aesthetic_score >= T",
        description="Write the samples of PATH whose aesthetic_score >= THRESHOLD as a new, resharded "
                    "WebDataset in --out (tars + Parquet, new keys). PATH's metadata must already have "
                    "aesthetic_score (run 'score' first, in place). Rows without a score are not kept.")
    filt.add_argument("path", metavar="PATH", help="scored dataset directory (tars + Parquet with aesthetic_score)")
    filt.add_argument("--threshold", metavar="T", type=float, required=True, help="keep rows with score >= T")
    filt.add_argument("--out", metavar="DIR", required=True, help="output directory (not PATH)")
    filt.add_argument("--mode", choices=("error", "overwrite", "resume"), default="error",
                      help="if --out already holds shards: error (default), overwrite them, or resume an "
                           "interrupted run of the same filter (keeps complete output shards)")
    filt.add_argument("--samples-per-shard", metavar="N", type=positive_int, default=10000,
                      help="samples per output shard (default: 10000)")
    filt.add_argument("--id-col", metavar="COL", default="key", help="the id column (default: key)")
    add_quiet_option(filt, "no log lines and no progress bar")
    filt.set_defaults(func=run)


def run(args) -> int:
    common.check_dataset_path(args.path)
    import dask

    from nemo_aesthetic.datasets import ImageTextPairDataset

    dataset = ImageTextPairDataset.from_webdataset(args.path, id_col=args.id_col)
    columns = list(dataset.metadata.columns)
    if SCORE_COLUMN not in columns:
        raise UsageError(f"{args.path} has no {SCORE_COLUMN} column (columns: {', '.join(map(str, columns))}); "
                         f"run '{PROG} score {args.path}' first")
    if all(s.tar is None for s in dataset.shards):
        raise UsageError(f"{args.path} has metadata but no tar files; run filter on the directory that holds "
                         "the tars and the scored Parquet (score in place, without --out)")
    _check_out(args)
    meta = dataset.metadata
    score = meta[SCORE_COLUMN]
    dataset.metadata = meta.assign(**{FILTER_COLUMN: (score >= args.threshold).fillna(False)})
    context = contextlib.nullcontext()
    if not args.quiet and sys.stderr.isatty():
        from dask.diagnostics import ProgressBar

        context = ProgressBar(out=sys.stderr)
    with context:
        rows, kept_rows, missing_scores = dask.compute(
            score.size, (score >= args.threshold).sum(), score.isna().sum())
        logger.info("writing the %d row(s) with %s >= %g to %s", int(kept_rows), SCORE_COLUMN, args.threshold,
                    args.out)
        result = dataset.to_webdataset(args.out, FILTER_COLUMN, samples_per_shard=args.samples_per_shard,
                                       mode=args.mode)
    rows, kept_rows, missing_scores = int(rows), int(kept_rows), int(missing_scores)
    dropped = rows - kept_rows - missing_scores
    print(f"rows: {rows}   kept: {result['written']} (score >= {args.threshold:g})   dropped: {dropped} "
          f"(score < {args.threshold:g})   missing: {missing_scores} (no score)")
    if result["missing"]:
        print(f"  {len(result['missing'])} kept row(s) had no image in their tar and were not written, "
              f"e.g. {result['missing'][:3]}")
    if result["shards"]:
        print(f"wrote {result['written']} samples in {result['shards']} shard(s) to {args.out}")
    else:
        print(f"no row has {SCORE_COLUMN} >= {args.threshold:g}: nothing written to {args.out}")
    return 0


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
