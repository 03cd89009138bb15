"""The ``nemo-aesthetic`` command: ``demo``, ``score``, ``filter`` and ``report``.

    nemo-aesthetic demo                       build a sample dataset, score it, print a ranked table
    nemo-aesthetic score PATH                 embed + score an img2dataset/WebDataset directory
    nemo-aesthetic filter PATH --threshold T --out DIR   keep rows with aesthetic_score >= T
    nemo-aesthetic report PATH --out report.html        HTML report: histogram, best/worst images, errors

Errors a user can fix (a wrong path, a missing weights file, a bad option) are printed as a
message on stderr with exit code 2 and no traceback. Per-shard progress comes from the
library's ``nemo_aesthetic`` logger (forwarded from the Dask workers) on stderr; ``--quiet``
silences it and the progress bar.

Heavy imports (torch, timm, dask.dataframe) happen inside the commands, so ``--help`` is quick.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import threading
import time

from distributed.diagnostics.plugin import WorkerPlugin

from nemo_aesthetic.report import reason_group  # the error grouping, shared with the HTML report
from nemo_aesthetic.weights import WeightsUnavailableError

logger = logging.getLogger("nemo_aesthetic.cli")

PROG = "nemo-aesthetic"
#: The CLIP model the LAION aesthetic predictor was trained on (OpenAI ViT-L/14, QuickGELU).
DEFAULT_MODEL = "vit_large_patch14_clip_quickgelu_224.openai"
#: A tiny, randomly initialised model of the same family (768-d output) for offline smoke tests.
TINY_MODEL = "vit_large_patch14_clip_quickgelu_224"
TINY_KWARGS = {"depth": 1, "embed_dim": 32, "num_heads": 2, "global_pool": "avg"}  # avg: sees the picture
SCORE_COLUMN = "aesthetic_score"
FILTER_COLUMN = "passes_aesthetic_check"
LOCAL_CLUSTERS = ("cpu", "gpu", "sync")


class UsageError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 2."""


# ---------------------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"depth\": 1}}', got {text!r}")
    return value


def _cluster(text: str) -> str:
    if text in LOCAL_CLUSTERS or "://" in text or re.fullmatch(r"[\w.\-\[\]:]+:\d+", text):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r}: use cpu, gpu, sync or a scheduler address such as tcp://host:8786")


def _add_model_options(p: argparse.ArgumentParser, batch_default_help: str) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="NAME", default=None,
                   help=f"timm model name with its pretrained tag (default: {DEFAULT_MODEL}, the CLIP "
                        "ViT-L/14 the aesthetic predictor was trained on; any model must give 768-d embeddings)")
    g.add_argument("--clip-checkpoint", metavar="PATH", default=None,
                   help="local weights file for the CLIP model (a timm state dict, .pth/.bin/.safetensors), "
                        "loaded with pretrained=False instead of the Hugging Face hub")
    g.add_argument("--model-kwargs", metavar="JSON", type=_json_object, default=None,
                   help="extra timm.create_model arguments as a JSON object, e.g. "
                        "'{\"depth\": 1, \"embed_dim\": 32, \"num_heads\": 2}'")
    g.add_argument("--aesthetic-weights", metavar="PATH", default=None,
                   help="the LAION aesthetic predictor file sac+logos+ava1-l14-linearMSE.pth (default: "
                        "$NEMO_AESTHETIC_HOME, else ~/.cache/nemo_aesthetic, downloaded there if absent and online)")
    g.add_argument("--batch-size", metavar="N", type=_positive_int, default=None,
                   help=f"images per forward pass ({batch_default_help})")


def _add_run_options(p: argparse.ArgumentParser, cluster_default: str) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--cluster", type=_cluster, default=cluster_default, metavar="cpu|gpu|sync|ADDRESS",
                   help="cpu: a local Dask cluster of worker processes; gpu: dask-cuda's LocalCUDACluster, one "
                        "worker per GPU (needs the gpu extra); sync: no cluster, everything in this process with "
                        "dask's synchronous scheduler (small jobs, tests); ADDRESS: a running scheduler such as "
                        f"tcp://host:8786 (default: {cluster_default})")
    g.add_argument("--scheduler-file", metavar="F", default=None,
                   help="connect to the cluster whose scheduler wrote this file (dask scheduler --scheduler-file F)")
    g.add_argument("--workers", metavar="N", type=_positive_int, default=None,
                   help="worker processes of a local cpu cluster (default: one per shard, at most one per CPU "
                        "core; each loads its own copy of the model)")
    g.add_argument("--threads", metavar="N", type=_positive_int, default=4,
                   help="image decode/preprocess threads per worker (default: 4)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no per-shard log lines and no progress bar (warnings and the results still print)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Score the aesthetic quality of image-text datasets (img2dataset / WebDataset shards: "
                    "NNNNN.tar + NNNNN.parquet) with CLIP ViT-L/14 and the LAION aesthetic predictor, on Dask.",
        epilog=f"Run '{PROG} COMMAND --help' for a command's options. Exit codes: 0 ok, 1 unexpected error, "
               "2 usage error (bad path, option or missing weights).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo", help="build a small sample dataset, score it and print a ranked table",
        description="Build a small img2dataset-shaped sample dataset in --out (real photographs that ship "
                    "with scikit-image, plus generated poor images: noise, a flat colour, a heavy blur, a 16x16 "
                    "thumbnail, a truncated JPEG, and failed downloads), score it on a local Dask cluster, write "
                    "the scores into its Parquet files and print the images ranked by aesthetic score.",
        epilog="Offline: the CLIP weights must already be in the Hugging Face cache (or pass --clip-checkpoint) "
               "and the aesthetic weights in $NEMO_AESTHETIC_HOME (or pass --aesthetic-weights); without them "
               "the command stops and says which files to place where. --tiny needs only the aesthetic weights.")
    demo.add_argument("--out", metavar="DIR", default="nemo-aesthetic-demo",
                      help="where to write the sample dataset and its scores (default: ./nemo-aesthetic-demo)")
    demo.add_argument("--tiny", action="store_true",
                      help="use a tiny randomly initialised model of the same family instead of CLIP: no CLIP "
                           "download, checks the whole pipeline in seconds, but the scores are MEANINGLESS")
    _add_model_options(demo, "default: 8")
    g = demo.add_argument_group("cluster")
    g.add_argument("--cluster", type=_cluster, default="cpu", metavar="cpu|gpu|sync",
                   help="cpu: local Dask cluster (default); gpu: LocalCUDACluster; sync: no cluster")
    g.add_argument("--workers", metavar="N", type=_positive_int, default=None,
                   help="worker processes of the local cpu cluster (default: 2, or 1 on a 1-core machine)")
    demo.add_argument("-q", "--quiet", action="store_true", help="no per-shard log lines and no progress bar")
    demo.set_defaults(func=cmd_demo, threads=4, scheduler_file=None)

    score = sub.add_parser(
        "score", help="embed and score a dataset, write the metadata with aesthetic_score",
        description="Embed every image of PATH (a directory of NNNNN.tar + NNNNN.parquet shards, local or any "
                    "fsspec URL) with CLIP, score it with the aesthetic predictor, and write each shard's "
                    "Parquet with new columns image_embedding, aesthetic_score and error (the reason a row has no "
                    "score). Every input row is kept. Prints rows, scored, errors by reason, score quantiles and "
                    "images/s.")
    score.add_argument("path", metavar="PATH", help="dataset directory (img2dataset output)")
    score.add_argument("--out", metavar="DIR", default=None,
                       help="write the Parquet files here instead of over PATH's (only Parquet is written; "
                            "'filter' needs the scored Parquet beside the tars, so score in place to filter)")
    score.add_argument("--id-col", metavar="COL", default="key", help="the id column (default: key)")
    _add_model_options(score, "default: 64 with --cluster gpu, else 8")
    _add_run_options(score, "cpu")
    score.set_defaults(func=cmd_score, tiny=False)

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
    filt.add_argument("--samples-per-shard", metavar="N", type=_positive_int, default=10000,
                      help="samples per output shard (default: 10000)")
    filt.add_argument("--id-col", metavar="COL", default="key", help="the id column (default: key)")
    filt.add_argument("-q", "--quiet", action="store_true", help="no log lines and no progress bar")
    filt.set_defaults(func=cmd_filter)

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
    rep.add_argument("--top", metavar="N", type=_positive_int, default=20,
                     help="images in each grid: top N, bottom N, N around the threshold (default: 20)")
    rep.add_argument("--id-col", metavar="COL", default="key", help="the id column (default: key)")
    rep.add_argument("-q", "--quiet", action="store_true", help="no log lines")
    rep.set_defaults(func=cmd_report)
    return parser


def _version() -> str:
    from nemo_aesthetic import __version__

    return __version__


# ---------------------------------------------------------------------------------------- entry
def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with _cli_logging(args.quiet):
        try:
            return args.func(args) or 0
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        except (UsageError, WeightsUnavailableError, OSError, ValueError, KeyError, ImportError) as exc:
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


# ---------------------------------------------------------------------------------------- logging
class _Console(logging.Handler):
    """Log records to stderr, printed above the progress bar when there is one."""

    def __init__(self):
        super().__init__()
        self.bar = None
        self.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(message)s", "%H:%M:%S"))

    def format(self, record):
        text = super().format(record).replace("[nemo_aesthetic.", "[", 1)
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname}: {text}"
        return text

    def emit(self, record):
        try:
            msg = self.format(record)
            bar = self.bar
            if bar is not None:
                bar.write(msg, file=sys.stderr)
            else:
                sys.stderr.write(msg + "\n")
                sys.stderr.flush()
        except Exception:
            self.handleError(record)


_CONSOLE = _Console()


@contextlib.contextmanager
def _cli_logging(quiet: bool):
    """Library log lines to stderr (INFO, or WARNING with --quiet); restored afterwards, so
    ``main()`` can also be called in-process (tests, notebooks) without changing their logging."""
    level = logging.WARNING if quiet else logging.INFO
    lib = logging.getLogger("nemo_aesthetic")
    quieted = [logging.getLogger(name) for name in ("distributed", "distributed.nanny", "dask")]
    saved = (lib.level, lib.propagate, [q.level for q in quieted])
    _CONSOLE.setLevel(level)
    lib.setLevel(level)
    lib.addHandler(_CONSOLE)
    lib.propagate = False
    # Dask's own chatter (cluster start/stop) is noise here; its warnings still show.
    for q in quieted:
        q.setLevel(max(q.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        lib.removeHandler(_CONSOLE)
        lib.setLevel(saved[0])
        lib.propagate = saved[1]
        for q, lvl in zip(quieted, saved[2]):
            q.setLevel(lvl)


class _WorkerLogLevel(WorkerPlugin):
    """Sets the ``nemo_aesthetic`` logger's level on every worker (present and future)."""

    name = "nemo-aesthetic-log-level"

    def __init__(self, level: int):
        self.level = level

    def setup(self, worker):
        logging.getLogger("nemo_aesthetic").setLevel(self.level)


_SHARD_LINE = re.compile(r"^shard (\S+): \d+ rows, \d+ scored")


class _ShardProgress(logging.Handler):
    """Counts the embedder's per-shard log lines (forwarded from the workers) as progress."""

    def __init__(self, total: int, show_bar: bool):
        super().__init__(logging.INFO)
        self.total = total
        self.seen: set[str] = set()
        self.done = threading.Event()
        self.bar = None
        if show_bar and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="shard", desc="scoring", file=sys.stderr, dynamic_ncols=True)
        if total == 0:
            self.done.set()

    def emit(self, record):
        m = _SHARD_LINE.match(record.getMessage())
        if not m or m.group(1) in self.seen:
            return
        self.seen.add(m.group(1))
        if self.bar is not None:
            self.bar.update(1)
        if len(self.seen) >= self.total:
            self.done.set()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        super().close()


@contextlib.contextmanager
def _shard_progress(total: int, quiet: bool, wait_for_logs: bool):
    lib = logging.getLogger("nemo_aesthetic")
    progress = _ShardProgress(total, show_bar=not quiet and sys.stderr.isatty())
    _CONSOLE.bar = progress.bar
    lib.addHandler(progress)
    try:
        yield progress
        if wait_for_logs and not quiet:
            # Forwarded log records travel separately from the results: let the last ones land.
            progress.done.wait(timeout=5.0)
    finally:
        lib.removeHandler(progress)
        _CONSOLE.bar = None
        progress.close()


# ---------------------------------------------------------------------------------------- cluster
@contextlib.contextmanager
def _dask_client(cluster: str, scheduler_file: str | None, workers: int | None, n_shards: int, quiet: bool):
    """A Dask client for the run (None for ``sync``), closed afterwards with any cluster it started."""
    import dask

    if scheduler_file and cluster != "cpu":
        raise UsageError("give --cluster or --scheduler-file, not both")
    if cluster == "sync" and not scheduler_file:
        with dask.config.set(scheduler="synchronous"):
            yield None
        return
    from nemo_aesthetic import get_client

    if scheduler_file:
        client = get_client(scheduler_file=scheduler_file)
    elif cluster == "cpu":
        n_workers = workers or max(1, min(os.cpu_count() or 1, n_shards))
        logger.info("starting a local Dask cluster with %d worker process(es)", n_workers)
        client = get_client("cpu", n_workers=n_workers, threads_per_worker=1, dashboard_address=":0")
    elif cluster == "gpu":
        client = get_client("gpu")
    else:
        client = get_client(scheduler_address=cluster)
    started = client.cluster if (scheduler_file is None and cluster in ("cpu", "gpu")) else None
    try:
        level = logging.WARNING if quiet else logging.INFO
        client.register_plugin(_WorkerLogLevel(level))
        client.forward_logging("nemo_aesthetic", level=level)
        yield client
    finally:
        # Workers that take a few seconds to exit get killed by their nanny with a WARNING: the
        # results are already written by then, so that message is only noise here.
        nanny = logging.getLogger("distributed.nanny")
        nanny.setLevel(logging.ERROR)
        client.close()
        if started is not None:
            started.close()


# ---------------------------------------------------------------------------------------- weights
def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _hub_reachable(timeout: float = 4.0) -> tuple[bool, str]:
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True, ""  # it answered
    except (urllib.error.URLError, OSError) as exc:
        return False, f"cannot reach {constants.ENDPOINT}: {getattr(exc, 'reason', exc)}"
    return True, ""


def clip_weights_message(model_name: str, repo: str, filenames: list[str], reason: str,
                         cache_dir: str | None = None) -> str:
    cache = cache_dir or _hf_cache_dir()
    folder = "models--" + repo.replace("/", "--")
    return "\n".join([
        f"CLIP image model {model_name}: weights are not available ({reason}).",
        f"timm loads them from the Hugging Face hub repo {repo}, file {filenames[0]}"
        + (f" (or {', '.join(filenames[1:])})" if len(filenames) > 1 else "") + ",",
        f"through the Hugging Face cache {cache} (set by $HF_HUB_CACHE or $HF_HOME),",
        f"where it must sit as {os.path.join(cache, folder, 'snapshots', '<revision>', filenames[0])}.",
        f"To fill the cache, on a machine with network: hf download {repo} {filenames[0]}",
        f"and copy {os.path.join(cache, folder)} to the same place here (then HF_HUB_OFFLINE=1 works);",
        "or pass --clip-checkpoint PATH with a local timm state dict of the model.",
    ])


def check_clip_weights(model_name: str, cache_dir: str | None = None) -> str | None:
    """Make sure timm will find the CLIP weights of ``model_name``; returns their local path if known.

    A cached file is enough. Offline (``HF_HUB_OFFLINE`` / ``NEMO_AESTHETIC_OFFLINE``) or with the
    hub unreachable, a missing file raises :class:`WeightsUnavailableError` naming the repo,
    file and cache folder, before any cluster starts. Online, the file is downloaded here the way
    timm would (``model.safetensors``, else ``pytorch_model.bin``) so the workers find it cached;
    a failed download gives the same message.
    """
    from timm.models import get_pretrained_cfg

    from nemo_aesthetic.weights import offline

    if model_name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return None  # timm resolves these itself; let it
    import timm

    if not timm.is_model(model_name.split(".", 1)[0]):
        raise UsageError(f"timm does not know model {model_name!r} (see timm.list_models())")
    try:
        cfg = get_pretrained_cfg(model_name)
    except RuntimeError as exc:  # an architecture timm knows, with a tag it does not
        raise UsageError(f"{model_name!r}: {exc}") from None
    if cfg is None:
        raise UsageError(f"timm has no pretrained weights for {model_name!r}; pass --clip-checkpoint PATH "
                         "(with --model-kwargs if the architecture needs them), or pick a tagged model such as "
                         f"{DEFAULT_MODEL}")
    if not cfg.hf_hub_id:
        return None  # downloaded from a URL by torch.hub: nothing to check beforehand
    repo, _, revision = cfg.hf_hub_id.partition("@")
    revision = revision or None
    filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    for filename in filenames:
        cached = try_to_load_from_cache(repo, filename, cache_dir=cache_dir, revision=revision)
        if isinstance(cached, str):
            return cached
    if offline():
        which = [v for v in ("HF_HUB_OFFLINE", "NEMO_AESTHETIC_OFFLINE")
                 if os.environ.get(v, "").lower() in ("1", "true", "yes")]
        raise WeightsUnavailableError(clip_weights_message(
            model_name, repo, filenames, f"offline mode is set ({', '.join(which)}=1) and they are not cached", cache_dir))
    reachable, why = _hub_reachable()
    if not reachable:
        raise WeightsUnavailableError(clip_weights_message(model_name, repo, filenames, why, cache_dir))
    from huggingface_hub.errors import EntryNotFoundError

    last = None
    for filename in filenames:
        logger.info("downloading %s/%s into the Hugging Face cache (CLIP ViT-L/14 is about 1.2 GB)", repo, filename)
        try:
            return hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir)
        except EntryNotFoundError as exc:
            last = exc
            continue
        except Exception as exc:  # HTTP errors, timeouts, disk full: all mean "not available"
            raise WeightsUnavailableError(clip_weights_message(
                model_name, repo, filenames, f"download failed: {type(exc).__name__}: {exc}", cache_dir)) from exc
    raise WeightsUnavailableError(clip_weights_message(
        model_name, repo, filenames, f"download failed: {last}", cache_dir))


def check_checkpoint(path: str, model_name: str, model_kwargs: dict) -> None:
    """Fail early, with names, if ``path`` is not a timm state dict of this architecture.

    timm's ``checkpoint_path`` loads strictly on each worker; a mismatch would otherwise surface
    there as a long traceback. Reads keys and shapes only (safetensors header, mmapped torch file).
    """
    if not os.path.exists(path):
        raise UsageError(f"--clip-checkpoint does not exist: {path}")
    if os.path.isdir(path):
        raise UsageError(f"--clip-checkpoint is a directory, expected a weights file: {path}")
    import timm
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:
                state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict):
                for wrapper in ("state_dict", "model"):
                    if isinstance(state.get(wrapper), dict):
                        state = state[wrapper]
                        break
            if not isinstance(state, dict):
                raise ValueError(f"it holds a {type(state).__name__}, not a state dict")
            shapes = {k.removeprefix("module."): tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    except Exception as exc:
        raise UsageError(f"--clip-checkpoint {path} cannot be read as weights: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False, **model_kwargs)
    except Exception as exc:
        raise UsageError(f"cannot build model {model_name!r} with --model-kwargs {json.dumps(model_kwargs)}: "
                         f"{type(exc).__name__}: {exc}") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {wrong[0]}: file {shapes[wrong[0]]} vs "
                         f"model {expected[wrong[0]]}")
        raise UsageError(f"--clip-checkpoint {path} does not fit {model_name} with --model-kwargs "
                         f"{json.dumps(model_kwargs)}: {'; '.join(parts)}. It must be a timm state dict of that "
                         "architecture (torch.save(model.state_dict()))")


# ---------------------------------------------------------------------------------------- shared
def _model_choice(args) -> tuple[str, dict, bool, str | None]:
    """(model name, model kwargs, pretrained, checkpoint) from the options."""
    name = args.model or (TINY_MODEL if args.tiny else DEFAULT_MODEL)
    kwargs = dict(TINY_KWARGS if (args.tiny and args.model_kwargs is None) else (args.model_kwargs or {}))
    checkpoint = args.clip_checkpoint
    pretrained = not args.tiny and checkpoint is None
    return name, kwargs, pretrained, checkpoint


def _resolve_aesthetic(path: str | None) -> str:
    from nemo_aesthetic.weights import AESTHETIC_WEIGHTS, resolve_weights

    if path is not None and os.path.isdir(path):
        raise UsageError(f"--aesthetic-weights is a directory, expected the file "
                         f"{AESTHETIC_WEIGHTS.filename}: {path}")
    return resolve_weights(AESTHETIC_WEIGHTS, path)


def _check_weights(args, model: str, kwargs: dict, pretrained: bool, checkpoint: str | None,
                   local: bool) -> str:
    """Resolve the aesthetic weights and check the CLIP weights; report every missing file at once."""
    problems, aesthetic = [], None
    try:
        aesthetic = _resolve_aesthetic(args.aesthetic_weights)
    except WeightsUnavailableError as exc:
        problems.append(str(exc))
    if checkpoint is not None:
        if local:
            check_checkpoint(checkpoint, model, kwargs)
    elif pretrained and local:
        try:
            check_clip_weights(model)
        except WeightsUnavailableError as exc:
            problems.append(str(exc))
    if problems:
        header = (f"{len(problems)} model files are missing; place both, then run again.\n\n"
                  if len(problems) > 1 else "")
        raise WeightsUnavailableError(header + "\n\n".join(problems))
    return aesthetic


def _make_embedder(model: str, kwargs: dict, pretrained: bool, checkpoint: str | None, aesthetic: str,
                   batch_size: int, threads: int):
    from nemo_aesthetic.image.classifiers import AestheticClassifier
    from nemo_aesthetic.image.embedders import TimmImageEmbedder

    return TimmImageEmbedder(model, pretrained=pretrained, checkpoint_path=checkpoint, model_kwargs=kwargs,
                             batch_size=batch_size, num_threads_per_worker=threads,
                             classifiers=[AestheticClassifier(model_path=aesthetic)])


def _run_and_save(dataset, embedder, out: str | None, client, quiet: bool) -> float:
    """Embed + score + save_metadata; returns the seconds it took."""
    scored = embedder(dataset)
    start = time.perf_counter()
    with _shard_progress(len(dataset.shards), quiet, wait_for_logs=client is not None):
        scored.save_metadata(out)
    return time.perf_counter() - start


def _read_results(fs, root: str, shards, columns: list[str]):
    """The given columns of every written shard Parquet, as one pandas frame (with the shard name)."""
    import pandas as pd
    import pyarrow.parquet as pq

    frames = []
    for shard in shards:
        with fs.open(f"{root}/{shard.name}.parquet", "rb") as f:
            names = pq.read_schema(f).names
            f.seek(0)
            table = pq.read_table(f, columns=[c for c in columns if c in names])
        frame = table.to_pandas()
        frame.insert(0, "shard", shard.name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["shard", *columns])


def _shorten(text, width: int) -> str:
    text = "" if text is None or text != text else str(text)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_summary(results, elapsed: float, where: str) -> None:
    import numpy as np

    rows = len(results)
    scores = results[SCORE_COLUMN].to_numpy(dtype=float, na_value=np.nan) if rows else np.array([])
    scored = int(np.isfinite(scores).sum())
    errors = results["error"].dropna().astype(str) if "error" in results else []
    rate = scored / elapsed if elapsed > 0 else 0.0
    print(f"rows: {rows}   scored: {scored}   errors: {len(errors)}   "
          f"time: {elapsed:.1f}s   {rate:.2f} images/s (end to end, model loading included)")
    if len(errors):
        groups = {}
        for reason in errors:
            g = groups.setdefault(reason_group(reason), [0, reason])
            g[0] += 1
        print("errors by reason:")
        for name, (count, example) in sorted(groups.items(), key=lambda kv: (-kv[1][0], kv[0])):
            print(f"  {count:>8}  {name}   e.g. {_shorten(example, 90)}")
    if scored:
        q = np.quantile(scores[np.isfinite(scores)], [0, 0.1, 0.5, 0.9, 1.0])
        print("aesthetic_score: min {:.3f}  p10 {:.3f}  median {:.3f}  p90 {:.3f}  max {:.3f}".format(*q))
    print(f"metadata written to {where} (columns {SCORE_COLUMN}, image_embedding, error)")


def _fs_root(path: str):
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    return fs, root.rstrip("/")


def _check_dataset_path(path: str) -> None:
    """A quick check before the heavy imports, so a typo in PATH fails in a second, not ten."""
    fs, root = _fs_root(path)
    if not fs.exists(root):
        raise UsageError(f"dataset path does not exist: {path}")
    if not fs.isdir(root):
        raise UsageError(f"dataset path is not a directory: {path}")


# ---------------------------------------------------------------------------------------- score
def cmd_score(args) -> int:
    _check_dataset_path(args.path)
    from nemo_aesthetic.datasets import ImageTextPairDataset

    dataset = ImageTextPairDataset.from_webdataset(args.path, id_col=args.id_col)
    local = args.scheduler_file is None and args.cluster in LOCAL_CLUSTERS
    model, kwargs, pretrained, checkpoint = _model_choice(args)
    aesthetic = _check_weights(args, model, kwargs, pretrained, checkpoint, local)
    batch_size = args.batch_size or (64 if args.cluster == "gpu" else 8)
    embedder = _make_embedder(model, kwargs, pretrained, checkpoint, aesthetic, batch_size, args.threads)
    out = args.out or args.path
    with _dask_client(args.cluster, args.scheduler_file, args.workers, len(dataset.shards), args.quiet) as client:
        logger.info("scoring %d shard(s) of %s with %s", len(dataset.shards), args.path, model)
        elapsed = _run_and_save(dataset, embedder, args.out, client, args.quiet)
    fs, root = _fs_root(out)
    results = _read_results(fs, root, dataset.shards, [args.id_col, SCORE_COLUMN, "error"])
    _print_summary(results, elapsed, out)
    return 0


# ---------------------------------------------------------------------------------------- filter
def cmd_filter(args) -> int:
    _check_dataset_path(args.path)
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
    meta = dataset.metadata
    score = meta[SCORE_COLUMN]
    dataset.metadata = meta.assign(**{FILTER_COLUMN: (score >= args.threshold).fillna(False)})
    show = not args.quiet
    context = contextlib.nullcontext()
    if show and sys.stderr.isatty():
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
    print(f"wrote {result['written']} samples in {result['shards']} shard(s) to {args.out}")
    return 0


# ---------------------------------------------------------------------------------------- report
def cmd_report(args) -> int:
    _check_dataset_path(args.path)
    if args.threshold is not None and args.threshold != args.threshold:
        raise UsageError("--threshold must be a number, not nan")
    from nemo_aesthetic import report

    if os.path.isdir(args.out):
        raise UsageError(f"--out is a directory, expected a file name such as report.html: {args.out}")
    if args.out.lower().endswith(".png"):
        raise UsageError(f"--out is the HTML file (its histogram goes beside it as .png): {args.out}")
    s = report.write_report(args.path, args.out, threshold=args.threshold, top=args.top, id_col=args.id_col)
    print(f"rows: {s['rows']}   scored: {s['scored']}   errors: {s['errors']}")
    if s["threshold"] is not None:
        how = "the median score; pass --threshold to choose" if s["threshold_is_median"] else "given"
        print(f"threshold: {s['threshold']:.3f} ({how}): {s['passing']} of {s['scored']} scored rows >= it")
    if s["missing_images"]:
        print(f"  {s['missing_images']} image(s) could not be read from the tars and show as a grey box")
    print(f"report written to {s['html']} (histogram also in {s['png']})")
    return 0


# ---------------------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    import tempfile

    from nemo_aesthetic import demo

    if args.cluster not in LOCAL_CLUSTERS:
        raise UsageError("demo runs on a local cluster: --cluster cpu, gpu or sync")
    out = os.path.abspath(args.out)
    demo.check_output_dir(out)
    model, kwargs, pretrained, checkpoint = _model_choice(args)
    aesthetic = _check_weights(args, model, kwargs, pretrained, checkpoint, local=True)
    if args.tiny:
        _print_tiny_banner()
    try:
        described = demo.build_demo_dataset(out)
    except demo.DemoDataError as exc:
        raise UsageError(str(exc)) from None
    logger.info("wrote the sample dataset (%d rows, %d shards) to %s", len(described), demo.N_SHARDS, out)

    from nemo_aesthetic.datasets import ImageTextPairDataset

    with tempfile.TemporaryDirectory(prefix="nemo-aesthetic-tiny-") as tmp:
        if args.tiny and checkpoint is None:
            # One seeded random model saved once, so every worker scores with the same weights.
            checkpoint = _save_tiny_checkpoint(model, kwargs, os.path.join(tmp, "tiny-random-clip.pth"))
            pretrained = False
        dataset = ImageTextPairDataset.from_webdataset(out)
        batch_size = args.batch_size or (64 if args.cluster == "gpu" else 8)
        embedder = _make_embedder(model, kwargs, pretrained, checkpoint, aesthetic, batch_size, args.threads)
        workers = args.workers or min(2, os.cpu_count() or 1)
        with _dask_client(args.cluster, None, workers, len(dataset.shards), args.quiet) as client:
            logger.info("scoring %d images with %s%s", len(described), model, " (tiny, random)" if args.tiny else "")
            elapsed = _run_and_save(dataset, embedder, None, client, args.quiet)
    fs, root = _fs_root(out)
    results = _read_results(fs, root, dataset.shards, ["key", "caption", SCORE_COLUMN, "error"])
    _print_ranked(results, elapsed, out, args.tiny)
    return 0


def _save_tiny_checkpoint(model: str, kwargs: dict, path: str) -> str:
    import timm
    import torch

    torch.manual_seed(0)
    torch.save(timm.create_model(model, pretrained=False, **kwargs).state_dict(), path)
    return path


def _print_tiny_banner() -> None:
    print("NOTE: --tiny uses a tiny RANDOMLY INITIALISED model, not CLIP: the scores below are MEANINGLESS.\n"
          "      It only checks that the pipeline runs. Drop --tiny (with the CLIP weights available) for real scores.",
          flush=True)


def _print_ranked(results, elapsed: float, out: str, tiny: bool) -> None:
    import numpy as np

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
        err = _shorten(row.error, 70) if isinstance(row.error, str) else ""
        print(f"{r:>4}  {row.key:<9}  {s}  {_shorten(row.caption, 48):<48}  {err}")
    scores = results["score_f"].to_numpy()
    scored = int(np.isfinite(scores).sum())
    errors = int(results["error"].notna().sum())
    line = f"\n{len(results)} images: {scored} scored, {errors} with errors"
    if scored:
        best = ranked.iloc[0]
        worst = ranked[np.isfinite(ranked["score_f"])].iloc[-1]
        line += (f"; best {best['score_f']:.2f} ({_shorten(best['caption'], 40)}), "
                 f"worst {worst['score_f']:.2f} ({_shorten(worst['caption'], 40)})")
    line += f"; {elapsed:.1f}s, {scored / elapsed if elapsed > 0 else 0:.2f} images/s."
    print(line)
    print(f"Scores written to {out}/*.parquet (column {SCORE_COLUMN}; reasons in 'error').")
    if tiny:
        print("REMINDER: --tiny scores come from a random model and are MEANINGLESS.")


if __name__ == "__main__":
    sys.exit(main())
