"""The ``nemo-aesthetic`` command: ``demo``, ``score``, ``dedup``, ``filter``, ``report`` and ``score-embeddings``.

    nemo-aesthetic demo                       build a sample dataset, score it, print a ranked table
    nemo-aesthetic score PATH                 embed + score an img2dataset/WebDataset directory
    nemo-aesthetic dedup PATH --eps E         mark near-duplicate images (duplicate_of) in the metadata
    nemo-aesthetic filter PATH --threshold T --out DIR   keep rows with aesthetic_score >= T
    nemo-aesthetic report PATH --out report.html        HTML report: histogram, best/worst images, errors
    nemo-aesthetic score-embeddings SRC --out DST       score precomputed CLIP embeddings (.npy / Parquet)

Errors a user can fix (a wrong path, a missing weights file, a bad option) are printed as a
message on stderr with exit code 2 and no traceback. Per-shard progress comes from the
library's ``nemo_aesthetic`` logger (forwarded from the Dask workers) on stderr; ``--quiet``
silences it and the progress bar.

One module per command (:mod:`.score`, :mod:`.dedup`, :mod:`.filter`, :mod:`.report`, :mod:`.demo`,
:mod:`.score_embeddings`, each with
``add_parser`` and ``run``); :mod:`.options` holds the shared option groups, :mod:`.console` the
log lines and progress bar, :mod:`.cluster` the Dask client, :mod:`.common` the steps several
commands take. What is known about weights files lives in :mod:`nemo_aesthetic.weights`.
Heavy imports (torch, timm, dask.dataframe) happen inside the commands, so ``--help`` is quick.
"""
from __future__ import annotations

import http.client
import sys

from nemo_aesthetic.cli import dedup, demo, filter, report, score, score_embeddings
from nemo_aesthetic.cli.cluster import quiet_teardown
from nemo_aesthetic.cli.console import cli_logging
from nemo_aesthetic.cli.options import DEFAULT_MODEL, PROG, TINY_KWARGS, TINY_MODEL, Parser, UsageError
from nemo_aesthetic.weights import WeightsUnavailableError

__all__ = ["main", "build_parser", "UsageError", "WeightsUnavailableError", "DEFAULT_MODEL", "TINY_MODEL",
           "TINY_KWARGS", "PROG"]

#: The commands, in the order ``--help`` lists them.
COMMANDS = (demo, score, dedup, filter, report, score_embeddings)


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="Score the aesthetic quality of image-text datasets (img2dataset / WebDataset shards: "
                    "NNNNN.tar + NNNNN.parquet) with CLIP ViT-L/14 and the LAION aesthetic predictor, on Dask.",
        epilog=f"Run '{PROG} COMMAND --help' for a command's options. Exit codes: 0 ok, 1 unexpected error, "
               "2 usage error (bad path, option or missing weights).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _version() -> str:
    from nemo_aesthetic import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with cli_logging(args.quiet):
        try:
            return args.func(args) or 0
        except KeyboardInterrupt:
            quiet_teardown()  # (tasks of the interrupted run are still being garbage-collected)
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        except (UsageError, WeightsUnavailableError, OSError, ValueError, KeyError, ImportError,
                http.client.HTTPException) as exc:  # (a network reply that is not HTTP, cut, ...)
            _error(exc)
            return 2
        except Exception as exc:  # a worker killed (out of memory?): say so without a traceback
            if type(exc).__name__ == "KilledWorker":
                _error(f"a Dask worker died while working ({exc}); out of memory? try fewer --workers "
                       "or a smaller --batch-size")
                return 2
            raise


def _error(exc) -> None:
    if isinstance(exc, KeyError) and exc.args:
        message = str(exc.args[0])
    elif isinstance(exc, BaseException):
        message = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename and exc.strerror:
            message = f"{exc.strerror}: {exc.filename}"
    else:
        message = str(exc)
    print(f"{PROG}: error: {message}", file=sys.stderr)
