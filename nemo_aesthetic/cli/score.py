"""``nemo-aesthetic score PATH``: embed and score a dataset, write its metadata with the scores."""
from __future__ import annotations

import logging
import tempfile

from nemo_aesthetic.cli import common
from nemo_aesthetic.cli.cluster import dask_client
from nemo_aesthetic.cli.options import (LOCAL_CLUSTERS, SCORE_COLUMN, UsageError,
                                        add_id_option, add_model_options, add_run_options)
from nemo_aesthetic.report.aggregates import score_summary  # counts and quantiles on the workers

logger = logging.getLogger("nemo_aesthetic.cli")


def add_parser(sub) -> None:
    score = sub.add_parser(
        "score", help="embed and score a dataset, write the metadata with aesthetic_score",
        description="Embed every image of PATH (local or any fsspec URL) with CLIP, score it with the aesthetic "
                    "predictor, and write each shard's Parquet with new columns image_embedding, aesthetic_score "
                    "and error (the reason a row has no score). PATH is a directory of NNNNN.tar + NNNNN.parquet "
                    "shards (img2dataset output), a folder of image files, or Parquet files with the image bytes "
                    "(img2dataset output_format=parquet, a Hugging Face export); the last two are read-only and "
                    "need --out (one Parquet per input file or per folder partition, with the key/path of each "
                    "image). Every input row is kept. Prints rows, scored, errors by reason, score quantiles and "
                    "images/s.")
    score.add_argument("path", metavar="PATH", help="the images: WebDataset shards, an image folder or Parquet files")
    score.add_argument("--out", metavar="DIR", default=None,
                       help="write the Parquet files here instead of over PATH's (only Parquet is written; each "
                            "file records PATH, so 'report DIR' and 'filter DIR' find the images there); "
                            "required for a folder or Parquet PATH")
    score.add_argument("--layout", choices=("webdataset", "folder", "parquet"), default=None,
                       help="PATH's layout (default: told from PATH)")
    score.add_argument("--image-column", metavar="COL", default=None,
                       help="Parquet PATH: the column holding the image bytes (default: jpg/png/webp, or a "
                            "{bytes, path} struct such as image)")
    add_id_option(score)
    add_model_options(score, "default: 256 with --cluster gpu, else 8")
    add_run_options(score, "cpu")
    score.set_defaults(func=run)


def run(args) -> int:
    common.check_dataset_path(args.path, files=True)
    local = args.scheduler_file is None and args.cluster in LOCAL_CLUSTERS
    if args.tiny and not local:
        raise UsageError("--tiny runs on a local cluster (--cluster cpu, gpu or sync): its random model is "
                         "a file on this machine")
    model, kwargs, pretrained, checkpoint = common.model_choice(args)
    from nemo_aesthetic.datasets import ImageTextPairDataset
    from nemo_aesthetic.engine.sources import LayoutError, detect_layout

    try:
        layout = args.layout or detect_layout(args.path)
        if layout == "webdataset":
            common.check_something_to_score(args.path)
        dataset = ImageTextPairDataset.from_path(args.path, layout, id_col=args.id_col,
                                                 image_column=args.image_column)
    except LayoutError as exc:
        raise UsageError(str(exc)) from None
    if dataset.layout != "webdataset" and args.out is None:
        raise UsageError(f"{args.path} is a {dataset.layout} source, read-only here: name a directory for "
                         "the scored Parquet files with --out DIR")
    aesthetic = common.check_weights(args, model, kwargs, pretrained, checkpoint, local)
    head = common.concrete_head(args, model)
    if args.tiny:
        print(f"NOTE: {common.TINY_NOTE}.", flush=True)
        if aesthetic is None:
            print(common.RANDOM_HEAD_NOTE, flush=True)
    batch_size, threads = common.batch_and_threads(args)
    out = args.out or args.path
    with tempfile.TemporaryDirectory(prefix="nemo-aesthetic-tiny-") as tmp:
        if args.tiny:
            checkpoint, aesthetic = common.tiny_models(model, kwargs, checkpoint, aesthetic, head, tmp)
            pretrained = False
        embedder = common.make_embedder(model, kwargs, pretrained, checkpoint, aesthetic, batch_size, threads, head)
        with dask_client(args.cluster, args.scheduler_file, args.workers, len(dataset.shards),
                         args.quiet) as client:
            logger.info("scoring %d shard(s) of %s with %s", len(dataset.shards), args.path, model)
            elapsed = common.run_and_save(dataset, embedder, args.out, client, args.quiet,
                                          common.provenance_metadata(model, args.tiny))
            fs, root = common.fs_root(out)
            stats, quantiles = score_summary(fs, [f"{root}/{s.name}.parquet" for s in dataset.shards],
                                             [s.name for s in dataset.shards], SUMMARY_QUANTILES)
    print_summary(stats, quantiles, elapsed, out, tiny=args.tiny)
    return 0


#: The score quantiles the summary prints: min, p10, median, p90, max.
SUMMARY_QUANTILES = (0, 0.1, 0.5, 0.9, 1.0)


def print_summary(stats, quantiles, elapsed: float, where: str, tiny: bool = False) -> None:
    """The summary lines, from aggregates computed on the workers (:func:`score_summary`: counts,
    errors by reason with their first example, and exact quantiles ``SUMMARY_QUANTILES``, as
    ``np.quantile`` over every score would give); no row of the dataset reaches the driver."""
    scored = stats.scored
    rate = scored / elapsed if elapsed > 0 else 0.0
    print(f"rows: {stats.rows}   scored: {scored}   errors: {stats.errors}   "
          f"time: {elapsed:.1f}s   {rate:.2f} images/s (end to end, model loading included)")
    if stats.errors:
        print("errors by reason:")
        for name, count, example in stats.error_groups():
            print(f"  {count:>8}  {name}   e.g. {common.shorten(example, 90)}")
    if scored:
        q = quantiles
        print("aesthetic_score: min {:.3f}  p10 {:.3f}  median {:.3f}  p90 {:.3f}  max {:.3f}".format(*q))
    print(f"metadata written to {where} (columns {SCORE_COLUMN}, image_embedding, error)")
    if tiny:
        print(f"REMINDER: {common.TINY_NOTE}.")
