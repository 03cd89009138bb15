"""``nemo-aesthetic dedup PATH --eps E``: mark the near-duplicates in a scored dataset's metadata.

A thin adapter over :func:`nemo_aesthetic.dedup.marking.mark_duplicates`: it opens the scored
metadata, runs the engine on the command's Dask cluster, and writes each shard's Parquet back
(over PATH's, or into ``--out``) with ``duplicate_of``, ``nearest_id``, ``nearest_similarity``
and ``dedup_error`` (:mod:`nemo_aesthetic.dedup.marking` says what each holds). ``filter --drop-duplicates`` then leaves the marked rows out.
"""
from __future__ import annotations

import argparse
import json
import logging
import posixpath

from nemo_aesthetic.cli import common
from nemo_aesthetic.cli.cluster import dask_client
from nemo_aesthetic.cli.options import PROG, UsageError, add_id_option, add_run_options, positive_int

logger = logging.getLogger("nemo_aesthetic.cli")

EMBEDDING_COLUMN = "image_embedding"
#: Recorded in every Parquet ``dedup`` writes, so a reader knows which eps marked the rows.
DEDUP_KEY = "nemo_aesthetic.dedup"


def add_parser(sub) -> None:
    dedup = sub.add_parser(
        "dedup", help="mark the near-duplicate images of a scored dataset (semantic dedup on its embeddings)",
        description="Find the near-duplicate images of PATH by their CLIP embeddings (k-means, then within each "
                    "cluster every row's highest cosine similarity to a row ranked before it: NeMo Curator's "
                    "SemDeDup) and write each shard's Parquet with new columns: nearest_id and "
                    "nearest_similarity (that most similar earlier row and its similarity, for every compared "
                    "row), duplicate_of (nearest_id where the row is a near-duplicate; that row is kept; null "
                    "for rows kept) and dedup_error (why a row was not "
                    "compared: no embedding, NaN or zero vector; such rows are kept). A row is a duplicate when "
                    "its similarity is >= 1 - EPS. Every row is kept in the metadata; 'filter --drop-duplicates' "
                    "writes the dataset without them, 'report' shows the closest pairs. PATH must have been "
                    "scored (column image_embedding).")
    dedup.add_argument("path", metavar="PATH", help="scored dataset directory (Parquet with image_embedding)")
    dedup.add_argument("--eps", metavar="E", type=_eps, required=True,
                       help="rows with cosine similarity >= 1 - E are duplicates (e.g. 0.01; 0 for exact copies)")
    dedup.add_argument("--n-clusters", metavar="K", type=positive_int, default=None,
                       help="k-means clusters (default: about the square root of the rows); near-duplicates are "
                            "only found within a cluster, at most the rows with an embedding")
    dedup.add_argument("--which-to-keep", choices=("hard", "easy", "random"), default="hard",
                       help="of a group of near-duplicates, keep the one farthest from its cluster centre (hard, "
                            "default, as upstream), the closest (easy) or any (random)")
    dedup.add_argument("--max-iter", metavar="N", type=positive_int, default=100,
                       help="k-means iterations at most (default: 100)")
    dedup.add_argument("--out", metavar="DIR", default=None,
                       help="write the Parquet files here instead of over PATH's (they record where the images "
                            "are, so 'filter DIR' and 'report DIR' find them)")
    add_id_option(dedup)
    add_run_options(dedup, "cpu")
    dedup.set_defaults(func=run)


def _eps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be within [0, 1), got {value:g}")
    return value


def run(args) -> int:
    common.check_dataset_path(args.path)
    from nemo_aesthetic.datasets import ImageTextPairDataset
    from nemo_aesthetic.datasets.provenance import LAYOUT_KEY, SOURCE_KEY, file_metadata
    from nemo_aesthetic.dedup.marking import mark_duplicates, scratch_name

    dataset = ImageTextPairDataset.from_webdataset(args.path, id_col=args.id_col)
    columns = list(dataset.metadata.columns)
    if EMBEDDING_COLUMN not in columns:
        raise UsageError(f"{args.path} has no {EMBEDDING_COLUMN} column (columns: {', '.join(map(str, columns))}); "
                         f"run '{PROG} score {args.path}' first")
    out = args.out or args.path
    fs, root = common.fs_root(out)
    _, src = common.fs_root(args.path)
    if args.out is not None and posixpath.join(root, "").startswith(posixpath.join(src, "")) and root != src:
        raise UsageError(f"--out {args.out} is inside PATH; choose a directory outside it (or omit --out to "
                         "write over PATH's Parquet)")
    in_fs, _ = common.fs_root(args.path)
    kept = {k: v for k, v in file_metadata(in_fs, dataset.shards[0].parquet).items()
            if k not in (SOURCE_KEY, LAYOUT_KEY, DEDUP_KEY)}  # the model, --tiny's warning
    scratch = posixpath.join(root, scratch_name())
    work = scratch if "://" not in out else fs.unstrip_protocol(scratch)
    settings = {"eps": args.eps, "n_clusters": args.n_clusters, "which_to_keep": args.which_to_keep}
    try:
        with dask_client(args.cluster, args.scheduler_file, args.workers, len(dataset.shards), args.quiet):
            marked, summary = mark_duplicates(dataset.metadata, args.id_col, EMBEDDING_COLUMN, args.eps, work,
                                              n_clusters=args.n_clusters, which_to_keep=args.which_to_keep,
                                              max_iter=args.max_iter)
            settings["n_clusters"] = summary["n_clusters"]
            dataset.metadata = marked
            dataset.save_metadata(args.out, file_metadata={**kept, DEDUP_KEY: json.dumps(settings)})
            duplicates = _count_duplicates(fs, root, dataset.shards)
    finally:
        if fs.exists(scratch):
            fs.rm(scratch, recursive=True)
    rows, usable = summary["rows"], summary["usable"]
    print(f"rows: {rows}   compared: {usable}   duplicates: {duplicates} (similarity >= {1 - args.eps:g}, "
          f"{summary['n_clusters']} clusters, keeping {args.which_to_keep})   not compared: {rows - usable}")
    print(f"metadata written to {out} (columns duplicate_of, nearest_id, nearest_similarity, dedup_error); "
          f"'{PROG} filter {out} --out DIR --drop-duplicates' writes the dataset without the duplicates")
    return 0


def _count_duplicates(fs, root: str, shards) -> int:
    """Duplicates in the written files, from their footers' null counts (nothing read per row).

    The footers are read on the workers, a few hundred per task (at 200,000 shards one by one on
    the driver they took about a minute); under ``--cluster sync`` the tasks run here."""
    import dask.bag as db

    paths = [f"{root}/{shard.name}.parquet" for shard in shards]
    counts = db.from_sequence(paths, partition_size=FOOTERS_PER_TASK).map_partitions(_duplicates_in_footers, fs)
    return int(counts.sum().compute())


#: Footers one count task reads.
FOOTERS_PER_TASK = 500


def _duplicates_in_footers(paths, fs) -> list[int]:
    import pyarrow.parquet as pq

    total = 0
    for path in paths:
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
            index = meta.schema.to_arrow_schema().get_field_index("duplicate_of")
            for g in range(meta.num_row_groups):
                stats = meta.row_group(g).column(index).statistics
                total += meta.row_group(g).num_rows - (stats.null_count if stats is not None else 0)
    return [total]
