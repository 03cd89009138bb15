"""What the commands share on the command line: the parser class, option types and option groups.

Kept free of heavy imports (no torch, timm, dask.dataframe) so ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import json
import re

from nemo_aesthetic.weights import CLIP_MODEL

PROG = "nemo-aesthetic"
#: The CLIP model the LAION aesthetic predictor was trained on (OpenAI ViT-L/14, QuickGELU).
DEFAULT_MODEL = CLIP_MODEL
#: A tiny, randomly initialised model of the same family (768-d output) for offline smoke tests.
TINY_MODEL = "vit_large_patch14_clip_quickgelu_224"
TINY_KWARGS = {"depth": 1, "embed_dim": 32, "num_heads": 2, "global_pool": "avg"}  # avg: sees the picture
SCORE_COLUMN = "aesthetic_score"
FILTER_COLUMN = "passes_aesthetic_check"
LOCAL_CLUSTERS = ("cpu", "gpu", "sync")


class UsageError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def score_number(text: str) -> float:
    """A score to compare with: any float but NaN (every comparison with NaN is false, so
    ``--threshold nan`` would keep nothing and still succeed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value:
        raise argparse.ArgumentTypeError("expected a number, got nan")
    return value


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"depth\": 1}}', got {text!r}")
    return value


def cluster_address(text: str) -> str:
    if text in LOCAL_CLUSTERS or "://" in text or re.fullmatch(r"[\w.\-\[\]:]+:\d+", text):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r}: use cpu, gpu, sync or a scheduler address such as tcp://host:8786")


def add_model_options(p: argparse.ArgumentParser, batch_default_help: str, tiny_help: str = "") -> None:
    """The options that choose and load the models, the same for every command that embeds images
    (``--model``, ``--clip-checkpoint``, ``--model-kwargs``, ``--tiny``, ``--batch-size``, then
    :func:`add_head_options`). ``cli.common.model_choice`` and ``check_weights`` read them back."""
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="NAME", default=None,
                   help=f"timm model name with its pretrained tag (default: {DEFAULT_MODEL}, the CLIP "
                        "ViT-L/14 the aesthetic predictor was trained on; with --head v1 also OpenAI CLIP "
                        "ViT-B/16 or ViT-B/32, e.g. vit_base_patch32_clip_224.openai)")
    g.add_argument("--clip-checkpoint", metavar="PATH", default=None,
                   help="local weights file for the CLIP model (a timm state dict, .pth/.bin/.safetensors), "
                        "loaded with pretrained=False instead of the Hugging Face hub")
    g.add_argument("--model-kwargs", metavar="JSON", type=json_object, default=None,
                   help="extra timm.create_model arguments as a JSON object, e.g. "
                        "'{\"depth\": 1, \"embed_dim\": 32, \"num_heads\": 2}'")
    g.add_argument("--tiny", action="store_true",
                   help="use a tiny randomly initialised model of the same family instead of CLIP: no download, "
                        "offline, checks the whole pipeline in seconds, but the scores are MEANINGLESS (and say "
                        "so); without the aesthetic weights, a random head of the same shape is used too"
                        + tiny_help)
    g.add_argument("--batch-size", metavar="N", type=positive_int, default=None,
                   help=f"images per forward pass ({batch_default_help})")
    add_head_options(g, V1_FOLLOWS_MODEL)


HEAD_CHOICES = ("v2", "v1", "v1-l14", "v1-b16", "v1-b32")  # = image.classifiers.aesthetic.HEAD_CHOICES
#: What ``--head v1`` means where the CLIP model is ours to run, and where the embeddings are given.
V1_FOLLOWS_MODEL = "v1 takes the one for --model's backbone (ViT-L/14, B/16 or B/32)"
V1_FOR_EMBEDDINGS = "v1 means v1-l14 (768-d embeddings); 512-d ones need v1-b16 or v1-b32"


def add_head_options(p, v1_help: str) -> None:
    """``--head`` and ``--aesthetic-weights``: which aesthetic head scores, and its file."""
    p.add_argument("--head", choices=HEAD_CHOICES, default="v2",
                   help="the aesthetic head: v2, the LAION improved aesthetic predictor for CLIP ViT-L/14 "
                        "(default), or a LAION-Aesthetics V1 linear head per OpenAI CLIP backbone: v1-l14, "
                        f"v1-b16 or v1-b32; {v1_help}")
    p.add_argument("--aesthetic-weights", metavar="PATH", default=None,
                   help="the head's weights file (v2: sac+logos+ava1-l14-linearMSE.pth; default: "
                        "$NEMO_AESTHETIC_HOME, else ~/.cache/nemo_aesthetic, downloaded there if absent and online)")


def add_id_option(p: argparse.ArgumentParser) -> None:
    """``--id-col``: every command that reads a dataset's metadata names its id column the same way."""
    p.add_argument("--id-col", metavar="COL", default="key", help="the id column (default: key)")


def add_run_options(p: argparse.ArgumentParser, cluster_default: str) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--cluster", type=cluster_address, default=cluster_default, metavar="cpu|gpu|sync|ADDRESS",
                   help="cpu: a local Dask cluster of worker processes; gpu: dask-cuda's LocalCUDACluster, one "
                        "worker per GPU (needs the gpu extra); sync: no cluster, everything in this process with "
                        "dask's synchronous scheduler (small jobs, tests); ADDRESS: a running scheduler such as "
                        f"tcp://host:8786 (default: {cluster_default})")
    g.add_argument("--scheduler-file", metavar="F", default=None,
                   help="connect to the cluster whose scheduler wrote this file (dask scheduler --scheduler-file F)")
    g.add_argument("--workers", metavar="N", type=positive_int, default=None,
                   help="worker processes of a local cpu cluster (default: one per shard, at most one per CPU "
                        "core; each loads its own copy of the model)")
    g.add_argument("--threads", metavar="N", type=positive_int, default=None,
                   help="image decode/preprocess threads per worker (default: 8 with --cluster gpu, else 4)")
    add_quiet_option(p, "no per-shard log lines and no progress bar (warnings and the results still print)")


def add_quiet_option(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help=help_text)
