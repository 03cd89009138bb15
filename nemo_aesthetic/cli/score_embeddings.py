"""``nemo-aesthetic score-embeddings SRC --out DST``: score CLIP embeddings you already have
(embedding-reader / clip-retrieval layouts), one Parquet of scores per input file."""
from __future__ import annotations

import logging
import re
import time

from nemo_aesthetic.cli import common
from nemo_aesthetic.cli.cluster import dask_client
from nemo_aesthetic.cli.options import (V1_FOR_EMBEDDINGS, UsageError, add_head_options, add_quiet_option, cluster_address,
                                        positive_int)

logger = logging.getLogger("nemo_aesthetic.cli")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "score-embeddings", help="score precomputed CLIP embeddings (.npy / Parquet), one Parquet per input file",
        description="Score the CLIP image embeddings under SRC, in one of embedding-reader's layouts: npy (a "
                    "folder of *.npy, float16/float32), parquet_npy (*.npy plus --metadata, a folder of Parquet "
                    "files paired with them by sorted name, same row counts) or parquet (an embedding list "
                    "column). Writes DST/<file>.parquet per input file, in input order: the metadata columns, "
                    "aesthetic_score and error (why a row has no score: null, NaN or all-zero embedding). Files "
                    "are written atomically; a file already scored by the same head is skipped, so running again "
                    "finishes an interrupted job. SRC and DST may be local paths or fsspec URLs.")
    p.add_argument("src", metavar="SRC", help="the embeddings folder (e.g. clip-retrieval's img_emb/)")
    p.add_argument("--out", metavar="DST", required=True, help="output folder (not inside SRC or --metadata)")
    p.add_argument("--format", dest="file_format", choices=("npy", "parquet_npy", "parquet"), default=None,
                   help="the layout (default: parquet_npy with --metadata, else npy)")
    p.add_argument("--metadata", metavar="DIR", default=None, help="metadata Parquet folder of the parquet_npy layout")
    add_head_options(p, V1_FOR_EMBEDDINGS)
    p.add_argument("--embedding-column", metavar="COL", default="embedding",
                   help="the embedding column of the parquet layout (default: embedding)")
    p.add_argument("--columns", metavar="COLS", default=None,
                   help="comma-separated metadata columns to copy (default: all but the embeddings)")
    p.add_argument("--batch-rows", metavar="N", type=positive_int, default=65536,
                   help="rows read and scored at once per task (default: 65536; memory ~ N x dim floats)")
    g = p.add_argument_group("cluster")
    g.add_argument("--cluster", type=cluster_address, default="sync", metavar="cpu|gpu|sync|ADDRESS",
                   help="sync (default: this process, one file at a time), cpu (a local cluster), gpu, or a "
                        "running scheduler's address")
    g.add_argument("--scheduler-file", metavar="F", default=None, help="connect to this scheduler file's cluster")
    g.add_argument("--workers", metavar="N", type=positive_int, default=None, help="workers of a local cpu cluster")
    add_quiet_option(p, "no per-file log lines")
    p.set_defaults(func=run)


def run(args) -> int:
    from nemo_aesthetic.embeddings import score_embeddings

    file_format = args.file_format or ("parquet_npy" if args.metadata else "npy")
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    _check_options(args, file_format, columns)
    weights = common.aesthetic_weights_option(args.aesthetic_weights, args.head)
    began = time.perf_counter()
    with dask_client(args.cluster, args.scheduler_file, args.workers, 1_000_000, args.quiet) as client:
        try:
            summary = score_embeddings(args.src, args.out, file_format=file_format, metadata=args.metadata,
                                       head=args.head, embedding_column=args.embedding_column, columns=columns,
                                       client=client, batch_rows=args.batch_rows, model_path=weights)
        except ValueError as exc:  # the API's head='v1-b16' is the command's --head v1-b16
            raise UsageError(re.sub(r"head='([\w-]+)'", r"--head \1", str(exc))) from None
    elapsed = time.perf_counter() - began
    rows, errors = summary["rows"], summary["errors"]
    print(f"files: {len(summary['written'])} written, {len(summary['skipped'])} already done   rows: {rows}   "
          f"not scored: {sum(errors.values())}   {rows / elapsed if elapsed > 0 else 0:,.0f} rows/s")
    for reason, count in sorted(errors.items(), key=lambda kv: -kv[1]):
        print(f"  {count:>10}  {reason}")
    print(f"scores written to {args.out}")
    return 0


def _check_options(args, file_format: str, columns: list[str] | None) -> None:
    """The library's refusals of these arguments, said in the command's terms."""
    _, out = common.fs_root(args.out)
    for option, folder in (("SRC", args.src), ("--metadata", args.metadata)):
        if folder and (out + "/").startswith(common.fs_root(folder)[1] + "/"):
            raise UsageError(f"--out {args.out} is inside {option} ({folder}); write the scores elsewhere")
    if args.metadata and file_format != "parquet_npy":
        raise UsageError(f"--metadata is for --format parquet_npy, not --format {file_format}")
    if file_format == "npy" and columns:
        raise UsageError("--format npy has no metadata columns to copy: use --format parquet_npy with --metadata "
                         "for --columns")
