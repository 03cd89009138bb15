"""Steps more than one command takes: choosing and checking the model, running the embedder,
reading the written Parquet back, and checking a dataset path before any heavy import."""
from __future__ import annotations

import os
import sys
import time

from nemo_aesthetic.cli.console import job_progress
from nemo_aesthetic.cli.options import DEFAULT_MODEL, TINY_KWARGS, TINY_MODEL, UsageError
from nemo_aesthetic.weights import WeightsUnavailableError


def model_choice(args) -> tuple[str, dict, bool, str | None]:
    """(model name, model kwargs, pretrained, checkpoint) from the options; a model name timm does
    not know is a UsageError naming the closest ones, before any work."""
    from nemo_aesthetic.weights import check_model_name

    name = args.model or (TINY_MODEL if args.tiny else DEFAULT_MODEL)
    try:
        check_model_name(name)
    except ValueError as exc:
        raise UsageError(f"--model: {exc}") from None
    kwargs = dict(TINY_KWARGS if (args.tiny and args.model_kwargs is None) else (args.model_kwargs or {}))
    checkpoint = args.clip_checkpoint
    pretrained = not args.tiny and checkpoint is None
    return name, kwargs, pretrained, checkpoint


def concrete_head(args, model: str) -> str:
    """The aesthetic head ``--head`` means after ``model`` ("v1" follows the backbone)."""
    from nemo_aesthetic.image.classifiers.aesthetic import resolve_head

    return resolve_head(getattr(args, "head", "v2"), model)


def check_weights(args, model: str, kwargs: dict, pretrained: bool, checkpoint: str | None,
                  local: bool) -> str | None:
    """Resolve the aesthetic weights (of ``--head``) and check the CLIP weights; report every
    missing file at once.

    ``local``: the workers share this machine's files, so the CLIP weights can be checked here;
    on a remote cluster they are the workers' business. With ``--tiny`` and no aesthetic weights
    to be had (and no ``--aesthetic-weights`` given), returns None: the run then uses a random head
    of the same shape (:func:`save_random_head`), as its CLIP model is random too.
    """
    from nemo_aesthetic.weights import check_checkpoint, check_clip_weights

    problems, aesthetic, clip_missing = [], None, False
    try:
        aesthetic = aesthetic_weights_option(args.aesthetic_weights, concrete_head(args, model), resolve=True)
    except WeightsUnavailableError as exc:
        if not (args.tiny and args.aesthetic_weights is None):
            problems.append(str(exc))
        else:  # the random head is announced by the caller; say why the real one could not be had
            print(f"NOTE: --tiny goes on without the real aesthetic head: {exc}", file=sys.stderr, flush=True)
    if checkpoint is not None:
        if local:
            check_checkpoint(checkpoint, model, kwargs)
    elif pretrained and local:
        try:
            check_clip_weights(model)
        except WeightsUnavailableError as exc:
            problems.append(str(exc))
            clip_missing = True
    if problems:
        header = (f"{len(problems)} model files are missing; place both, then run again.\n\n"
                  if len(problems) > 1 else "")
        footer = ""
        if clip_missing:
            footer = ("\n\nTo try the pipeline without the CLIP weights, add --tiny: a tiny random model of the "
                      "same family that runs offline in seconds (its scores are meaningless).")
        raise WeightsUnavailableError(header + "\n\n".join(problems) + footer)
    return aesthetic


def aesthetic_weights_option(path: str | None, head: str, resolve: bool = False) -> str | None:
    """``--aesthetic-weights`` checked (it must be a file of ``--head``'s), or with ``resolve`` and
    no path: the cache's file, downloaded and verified if absent (WeightsUnavailableError if not)."""
    from nemo_aesthetic.image.classifiers.aesthetic import HEADS, resolve_head
    from nemo_aesthetic.weights import resolve_aesthetic_weights

    if path is None and not resolve:
        return None
    spec = HEADS[resolve_head(head)][0]
    if path is not None and "://" not in path and not os.path.exists(path):
        raise UsageError(f"--aesthetic-weights does not exist: {path} (expected the file {spec.filename})")
    return resolve_aesthetic_weights(path, spec)


def save_tiny_checkpoint(model: str, kwargs: dict, path: str) -> str:
    """One seeded random model saved once, so every worker scores with the same weights."""
    import timm
    import torch

    torch.manual_seed(0)
    torch.save(timm.create_model(model, pretrained=False, **kwargs).state_dict(), path)
    return path


def save_random_head(head: str, path: str) -> str:
    """A seeded random aesthetic head of ``head``'s shape (``--tiny`` without the real weights file)."""
    import torch

    from nemo_aesthetic.image.classifiers.aesthetic import HEADS, upstream_mlp

    torch.manual_seed(0)
    if head == "v2":
        state = {f"layers.{k}": v for k, v in upstream_mlp().state_dict().items()}
    else:
        state = torch.nn.Linear(HEADS[head][1], 1).state_dict()
    torch.save(state, path)
    return path


#: What ``--tiny`` prints when it scores with a random head as well.
RANDOM_HEAD_NOTE = ("NOTE: no aesthetic weights file here (offline?): --tiny scores with a RANDOM head of the same "
                    "shape too.")


def tiny_models(model: str, kwargs: dict, checkpoint: str | None, aesthetic: str | None, head: str,
                folder: str) -> tuple[str | None, str]:
    """``(checkpoint, aesthetic weights)`` for a ``--tiny`` run: the random CLIP-shaped model (unless
    a checkpoint was given) and, where ``aesthetic`` is None, a random head, saved in ``folder``."""
    if checkpoint is None:
        checkpoint = save_tiny_checkpoint(model, kwargs, os.path.join(folder, "tiny-random-clip.pth"))
    if aesthetic is None:
        aesthetic = save_random_head(head, os.path.join(folder, "random-aesthetic-head.pth"))
    return checkpoint, aesthetic


def provenance_metadata(model: str, tiny: bool) -> dict[str, str]:
    """What the written Parquet files record about how they were scored (see datasets.provenance)."""
    from nemo_aesthetic.datasets.provenance import MODEL_KEY, TINY_KEY

    return {MODEL_KEY: model, **({TINY_KEY: TINY_NOTE} if tiny else {})}


#: What every output of ``--tiny`` says (CLI summary, Parquet metadata, report banner).
TINY_NOTE = ("scored with --tiny: a tiny RANDOMLY INITIALISED model, not CLIP; the scores are MEANINGLESS "
             "and only show that the pipeline runs")


#: ``--cluster gpu`` defaults: a batch that fills an H100/H200 with ViT-L/14 (bf16), and decode threads
#: for the images nvJPEG does not take (PNG, progressive JPEG, ...) on a 16-core GPU machine.
GPU_BATCH_SIZE, GPU_THREADS = 256, 8


def batch_and_threads(args) -> tuple[int, int]:
    """``(batch size, decode threads per worker)``: the user's, else the defaults for the cluster."""
    gpu = args.cluster == "gpu"
    return args.batch_size or (GPU_BATCH_SIZE if gpu else 8), args.threads or (GPU_THREADS if gpu else 4)


def make_embedder(model: str, kwargs: dict, pretrained: bool, checkpoint: str | None, aesthetic: str,
                  batch_size: int, threads: int, head: str = "v2"):
    from nemo_aesthetic.image.classifiers import AestheticClassifier
    from nemo_aesthetic.image.embedders import TimmImageEmbedder

    return TimmImageEmbedder(model, pretrained=pretrained, checkpoint_path=checkpoint, model_kwargs=kwargs,
                             batch_size=batch_size, num_threads_per_worker=threads,
                             classifiers=[AestheticClassifier(model_path=aesthetic, head=head)])


def run_and_save(dataset, embedder, out: str | None, client, quiet: bool,
                 file_metadata: dict[str, str] | None = None) -> float:
    """Embed + score + save_metadata; returns the seconds it took."""
    scored = embedder(dataset)
    start = time.perf_counter()
    with job_progress(dataset, client, quiet):
        scored.save_metadata(out, file_metadata=file_metadata)
    return time.perf_counter() - start


def read_results(fs, root: str, shards, columns: list[str]):
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


def shorten(text, width: int) -> str:
    text = "" if text is None or text != text else str(text)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def fs_root(path: str):
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    return fs, root.rstrip("/")


def check_dataset_path(path: str, files: bool = False) -> None:
    """A quick check before the heavy imports, so a typo in PATH fails in a second, not ten.
    ``files``: a file (one Parquet) is a dataset too."""
    fs, root = fs_root(path)
    if not fs.exists(root):
        raise UsageError(f"dataset path does not exist: {path}")
    if not files and not fs.isdir(root):
        raise UsageError(f"dataset path is not a directory: {path}")


def check_something_to_score(path: str) -> None:
    """Scoring nothing at all is a mistake (a folder of metadata without its tars), not a run in
    which every row is "has no tar file": say what was expected, before anything is read or written."""
    from nemo_aesthetic.datasets import provenance
    from nemo_aesthetic.datasets.shards import discover_shards

    fs, root = fs_root(path)
    shards = [s for s in discover_shards(fs, root) if s.parquet is not None]
    if shards and all(s.tar is None for s in provenance.tars_from_source(fs, shards, {})):
        raise UsageError(f"{path} has {len(shards)} metadata Parquet file(s) but no .tar shards, so there is no "
                         "image to score; expected img2dataset's output: NNNNN.tar next to each NNNNN.parquet")
