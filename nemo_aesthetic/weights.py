"""Finding, downloading and verifying model files.

Resolution order for a weights file: an explicit ``model_path``; else the cache directory
(``$NEMO_AESTHETIC_HOME``, default ``~/.cache/nemo_aesthetic``); else a download from the
upstream URL (or ``$NEMO_AESTHETIC_MIRROR/<name>`` where a mirror is set), verified against its
sha256 (or, for a file upstream publishes without one, by loading it) and written atomically, so
an interrupted download never leaves a file that later runs would trust. A cached file that fails
the check is not used: it is replaced by a fresh download, or, offline, reported with the exact
file, directory and URL.

Downloads are streamed, hashed as they arrive and capped (``WeightsFile.max_bytes``, checked
against Content-Length first), so a server that sends an endless body, or a zip whose member
inflates to gigabytes, costs at most the cap in disk and a block in memory. Whatever goes wrong on
the wire (refused, reset, cut mid-body, a reply that is not HTTP) is one :class:`DownloadError`
saying what happened, never a raw ``http.client`` exception (see :mod:`nemo_aesthetic.download`).

The CLIP model's weights are loaded by timm's own hub loading (honouring the Hugging Face cache
and ``HF_HUB_OFFLINE``), or from a local ``checkpoint_path``; :mod:`nemo_aesthetic.clip_weights`
checks them up front (in the client, and on a worker before timm's retrying download), so a
missing or mismatched file is one clear message instead of a traceback on every worker.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import posixpath
import shutil
import tempfile
import urllib.parse
import zipfile
from typing import Callable

import fsspec

from nemo_aesthetic.atomic import atomic_open
from nemo_aesthetic.download import DownloadError, extract_member, fetch  # noqa: F401 (DownloadError: public)

logger = logging.getLogger(__name__)

OFFLINE_ENV = "NEMO_AESTHETIC_OFFLINE"
HOME_ENV = "NEMO_AESTHETIC_HOME"
MIRROR_ENV = "NEMO_AESTHETIC_MIRROR"
#: The CLIP model the LAION aesthetic predictor was trained on (OpenAI ViT-L/14, QuickGELU).
CLIP_MODEL = "vit_large_patch14_clip_quickgelu_224.openai"


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """A weights file: its name in the cache, where it comes from (a ``.zip`` URL: the file is
    that archive's member ``filename``), its sha256 ("" if upstream publishes none) and the most
    bytes a download of it (archive and member alike) may take."""

    filename: str
    url: str
    sha256: str
    description: str
    max_bytes: int = 64 * 2**20


AESTHETIC_WEIGHTS = WeightsFile(
    filename="sac+logos+ava1-l14-linearMSE.pth",
    url="https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth",
    sha256="21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0",
    description="LAION improved aesthetic predictor (v2) for CLIP ViT-L/14",
)

def _laion_v1(backbone: str, name: str, sha256: str) -> WeightsFile:
    filename = f"sa_0_4_{backbone}_linear.pth"
    return WeightsFile(
        filename=filename,
        url=f"https://github.com/LAION-AI/aesthetic-predictor/blob/main/{filename}?raw=true",
        sha256=sha256,
        description=f"LAION-Aesthetics V1 linear head for OpenAI CLIP {name}",
    )


#: LAION-Aesthetics V1 (LAION-AI/aesthetic-predictor, MIT): one ``nn.Linear(d, 1)`` per OpenAI
#: CLIP backbone, the head LAION-5B's ``aesthetic`` column was computed with. Keyed by backbone.
AESTHETIC_V1_WEIGHTS = {
    "vit_l_14": _laion_v1("vit_l_14", "ViT-L/14", "2cd4e60f4f24ae3bcd57b847b13c1f3ba27edc28cc1a7f9ce74ee9f421243cba"),
    "vit_b_16": _laion_v1("vit_b_16", "ViT-B/16", "8ad3923d7ecf019df20ecd2ab5542a3075fbba0278d239c0371345f3d7fcbde0"),
    "vit_b_32": _laion_v1("vit_b_32", "ViT-B/32", "c7b14cead230694acc7b9447974d3cad78003c72da032e402a303b6c2429e85f"),
}

#: The PyTorch port of LAION's CLIP-based NSFW detector. Upstream publishes it only inside a zip
#: (a GitHub issue attachment) and no checksum: ``sha256`` is empty, and the file is verified by
#: loading it into the architecture instead (see ``nemo_aesthetic.image.classifiers.nsfw``).
NSFW_WEIGHTS = WeightsFile(
    filename="clip_autokeras_binary_nsfw.pth",
    url="https://github.com/LAION-AI/CLIP-based-NSFW-Detector/files/10250461/clip_autokeras_binary_nsfw.zip",
    sha256="",
    description="LAION CLIP-based NSFW detector (PyTorch port) for CLIP ViT-L/14",
)


class WeightsUnavailableError(RuntimeError):
    """A weights file is neither present nor downloadable; the message says what to place where."""


def cache_dir() -> str:
    return os.path.expanduser(os.environ.get(HOME_ENV) or os.path.join("~", ".cache", "nemo_aesthetic"))


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in (OFFLINE_ENV, "HF_HUB_OFFLINE"))


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with fsspec.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_url(spec: WeightsFile) -> str:
    """``spec.url``, or the same file name (the zip's, for a zipped file) under ``$NEMO_AESTHETIC_MIRROR``."""
    mirror = os.environ.get(MIRROR_ENV)
    name = posixpath.basename(urllib.parse.urlparse(spec.url).path)
    return f"{mirror.rstrip('/')}/{name}" if mirror else spec.url


def resolve_weights(spec: WeightsFile, model_path: str | None = None, directory: str | None = None,
                    timeout: float = 60.0, verify: Callable[[str], object] | None = None) -> str:
    """The local path of ``spec``'s weights, downloading and verifying them if needed.

    An explicit ``model_path`` is used as given (it may be a fine-tuned checkpoint of the same
    shape, so its checksum is not imposed) but must exist. A spec without a sha256 is verified by
    ``verify(path)`` instead, which raises ValueError for a file that is not the right one.
    """
    if model_path is not None:
        fs, p = fsspec.core.url_to_fs(model_path)
        if not fs.exists(p):
            raise FileNotFoundError(f"{spec.description}: model_path does not exist: {model_path}")
        return model_path
    directory = directory or cache_dir()
    path = os.path.join(directory, spec.filename)
    url = download_url(spec)
    problem = None
    if os.path.exists(path):
        problem = _cached_problem(spec, path, verify)
        if problem is None:
            return path
        logger.warning("%s; downloading it again from %s", problem, url)
    if offline():
        raise WeightsUnavailableError(_missing_message(spec, path, directory, url, problem, "offline mode is set"))
    try:
        _download(spec, url, path, timeout, verify)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise WeightsUnavailableError(_missing_message(spec, path, directory, url, problem, str(exc))) from exc
    return path


def _cached_problem(spec: WeightsFile, path: str, verify) -> str | None:
    if not spec.sha256:
        try:
            verify(path)
            return None
        except ValueError as exc:
            return f"the cached file {path} does not load ({exc})"
    digest = sha256_of(path)
    return None if digest == spec.sha256 else f"the cached file {path} is corrupt (sha256 {digest}, expected {spec.sha256})"


def _download(spec: WeightsFile, url: str, path: str, timeout: float, verify) -> None:
    """Download into the cache atomically: a file that fails its check is never published."""
    logger.info("downloading %s -> %s", url, path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path) or ".", prefix=".tmp-") as tmp:
        fetched = os.path.join(tmp, "download")
        with open(fetched, "wb") as out:
            digest = fetch(url, out, spec.max_bytes, timeout)
        if spec.url.endswith(".zip"):
            fetched = extract_member(fetched, spec.filename, spec.max_bytes, os.path.join(tmp, spec.filename))
            digest = sha256_of(fetched)
        if spec.sha256 and digest != spec.sha256:
            raise ValueError(f"downloaded file has sha256 {digest}, expected {spec.sha256}")
        if not spec.sha256:
            verify(fetched)  # ValueError if it is not the right model
        with open(fetched, "rb") as src, atomic_open(fsspec.filesystem("file"), path) as out:
            shutil.copyfileobj(src, out, 1 << 20)


def _missing_message(spec: WeightsFile, path: str, directory: str, url: str, problem: str | None,
                     reason: str) -> str:
    lines = [f"{spec.description}: weights file {spec.filename} is not available."]
    if problem:
        lines.append(f"Problem: {problem}.")
    lines += [
        f"Download failed: {reason}." if reason else "",
        f"Place the file at {path} (directory {directory}, set by ${HOME_ENV}),",
        f"downloaded from {url} (sha256 {spec.sha256})," if spec.sha256 else
        f"extracted from {url} (no published checksum: the file is checked by loading it),",
        "or pass model_path= / --aesthetic-weights with its location.",
    ]
    return "\n".join(line for line in lines if line)


def resolve_aesthetic_weights(path: str | None = None, spec: WeightsFile = AESTHETIC_WEIGHTS) -> str:
    """The LAION aesthetic predictor file (``spec``: v2, or a V1 head): ``path`` if given (it must
    be a file), else the cache's."""
    if path is not None and os.path.isdir(path):
        raise ValueError(f"--aesthetic-weights is a directory, expected the file {spec.filename}: {path}")
    return resolve_weights(spec, path)


#: The CLIP model's weights (timm, Hugging Face hub) are checked in :mod:`nemo_aesthetic.clip_weights`;
#: these names are found here too (imported on first use: that module builds on this one).
CLIP_WEIGHTS_NAMES = frozenset({"check_checkpoint", "check_clip_weights", "check_model_name", "clip_weights_message",
                                "hf_cache_dir", "hub_reachable", "require_clip_weights_or_hub"})


def __getattr__(name: str):
    if name in CLIP_WEIGHTS_NAMES:
        from nemo_aesthetic import clip_weights

        return getattr(clip_weights, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
