"""``nemo-aesthetic demo``: build a small sample dataset, score it, print the images ranked."""
from __future__ import annotations

import logging
import os

from nemo_aesthetic.cli import common
from nemo_aesthetic.cli.cluster import dask_client
from nemo_aesthetic.cli.options import (LOCAL_CLUSTERS, SCORE_COLUMN, UsageError, add_model_options,
                                        add_quiet_option, cluster_address, positive_int)

logger = logging.getLogger("nemo_aesthetic.cli")


def add_parser(sub) -> None:
    demo = sub.add_parser(
        "demo", help="build a small sample dataset, score it and print a ranked table",
        description="Build a small img2dataset-shaped sample dataset in --out (real photographs that ship "
                    "with scikit-image, plus generated poor images: noise, a flat colour, a heavy blur, a 16x16 "
                    "thumbnail, a truncated JPEG, and failed downloads), score it on a local Dask cluster, write "
                    "the scores into its Parquet files and print the images ranked by aesthetic score.",
        epilog="Offline: the CLIP weights must already be in the Hugging Face cache (or pass --clip-checkpoint) "
               "and the aesthetic weights in $NEMO_AESTHETIC_HOME (or pass --aesthetic-weights); without them "
               "the command stops and says which files to place where. --tiny needs no weights and no network: "
               "without the aesthetic weights it uses a random head too.")
    demo.add_argument("--out", metavar="DIR", default=None,
                      help="where to write the sample dataset and its scores (default: demo/ in $NEMO_AESTHETIC_HOME, "
                           "else ~/.cache/nemo_aesthetic/demo; printed at the start)")
    add_model_options(demo, "default: 8, or 256 with --cluster gpu")
    g = demo.add_argument_group("cluster")
    g.add_argument("--cluster", type=cluster_address, default="cpu", metavar="cpu|gpu|sync",
                   help="cpu: local Dask cluster (default); gpu: LocalCUDACluster; sync: no cluster")
    g.add_argument("--workers", metavar="N", type=positive_int, default=None,
                   help="worker processes of the local cpu cluster (default: 2, or 1 on a 1-core machine)")
    add_quiet_option(demo, "no per-shard log lines and no progress bar")
    demo.set_defaults(func=run, threads=4, scheduler_file=None)


def run(args) -> int:
    import tempfile

    from nemo_aesthetic import demo

    if args.cluster not in LOCAL_CLUSTERS:
        raise UsageError("demo runs on a local cluster: --cluster cpu, gpu or sync")
    out = os.path.abspath(args.out or default_out())
    demo.check_output_dir(out)
    model, kwargs, pretrained, checkpoint = common.model_choice(args)
    aesthetic = common.check_weights(args, model, kwargs, pretrained, checkpoint, local=True)
    head = common.concrete_head(args, model)
    if args.tiny:
        print_tiny_banner(random_head=aesthetic is None)
    print(f"writing the sample dataset to {out}", flush=True)
    try:
        described = demo.build_demo_dataset(out)
    except demo.DemoDataError as exc:
        raise UsageError(str(exc)) from None
    logger.info("wrote the sample dataset (%d rows, %d shards) to %s", len(described), demo.N_SHARDS, out)

    from nemo_aesthetic.datasets import ImageTextPairDataset

    with tempfile.TemporaryDirectory(prefix="nemo-aesthetic-tiny-") as tmp:
        if args.tiny:
            checkpoint, aesthetic = common.tiny_models(model, kwargs, checkpoint, aesthetic, head, tmp)
            pretrained = False
        dataset = ImageTextPairDataset.from_webdataset(out)
        batch_size, threads = common.batch_and_threads(args)
        embedder = common.make_embedder(model, kwargs, pretrained, checkpoint, aesthetic, batch_size, threads, head)
        workers = args.workers or min(2, os.cpu_count() or 1)
        with dask_client(args.cluster, None, workers, len(dataset.shards), args.quiet) as client:
            logger.info("scoring %d images with %s%s", len(described), model, " (tiny, random)" if args.tiny else "")
            elapsed = common.run_and_save(dataset, embedder, None, client, args.quiet,
                                          common.provenance_metadata(model, args.tiny))
    fs, root = common.fs_root(out)
    results = common.read_results(fs, root, dataset.shards, ["key", "caption", SCORE_COLUMN, "error"])
    print_ranked(results, elapsed, out, args.tiny)
    return 0


def default_out() -> str:
    """Not the current folder (often a clone of this project): the user's nemo_aesthetic cache."""
    from nemo_aesthetic.weights import cache_dir

    return os.path.join(cache_dir(), "demo")


def print_tiny_banner(random_head: bool = False) -> None:
    print("NOTE: --tiny uses a tiny RANDOMLY INITIALISED model, not CLIP: the scores below are MEANINGLESS.\n"
          "      It only checks that the pipeline runs. Drop --tiny (with the CLIP weights available) for real scores.",
          flush=True)
    if random_head:
        print(common.RANDOM_HEAD_NOTE, flush=True)


def print_ranked(results, elapsed: float, out: str, tiny: bool) -> None:
    import numpy as np

    shorten = common.shorten
    results = results.assign(score_f=results[SCORE_COLUMN].astype(float))
    ranked = results.sort_values(["score_f", "key"], ascending=[False, True], na_position="last", kind="stable")
    print()
    print(f"{'rank':>4}  {'key':<9}  {'score':>6}  {'image (caption)':<48}  error")
    print(f"{'-' * 4}  {'-' * 9}  {'-' * 6}  {'-' * 48}  {'-' * 5}")
    rank = 0
    for row in ranked.itertuples(index=False):
        if np.isfinite(row.score_f):
            rank += 1
            r, s = str(rank), f"{row.score_f:6.3f}"
        else:
            r, s = "-", f"{'-':>6}"
        err = shorten(row.error, 70) if isinstance(row.error, str) else ""
        print(f"{r:>4}  {row.key:<9}  {s}  {shorten(row.caption, 48):<48}  {err}")
    scores = results["score_f"].to_numpy()
    scored = int(np.isfinite(scores).sum())
    errors = int(results["error"].notna().sum())
    line = f"\n{len(results)} images: {scored} scored, {errors} with errors"
    if scored:
        best = ranked.iloc[0]
        worst = ranked[np.isfinite(ranked["score_f"])].iloc[-1]
        line += (f"; best {best['score_f']:.2f} ({shorten(best['caption'], 40)}), "
                 f"worst {worst['score_f']:.2f} ({shorten(worst['caption'], 40)})")
    line += f"; {elapsed:.1f}s, {scored / elapsed if elapsed > 0 else 0:.2f} images/s."
    print(line)
    print(f"Scores written to {out}/*.parquet (column {SCORE_COLUMN}; reasons in 'error').")
    if tiny:
        print("REMINDER: --tiny scores come from a random model and are MEANINGLESS.")
