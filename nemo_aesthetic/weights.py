"""Finding, downloading and verifying model files.

Resolution order for a weights file: an explicit ``model_path``; else the cache directory
(``$NEMO_AESTHETIC_HOME``, default ``~/.cache/nemo_aesthetic``); else a download from the
upstream URL (or ``$NEMO_AESTHETIC_MIRROR/<filename>`` where a mirror is set), verified against
its sha256 and written atomically, so an interrupted download never leaves a file that later
runs would trust. A cached file with the wrong checksum is not used: it is replaced by a fresh
download, or, offline, reported with the exact file, directory and URL.

The CLIP model's weights are not handled here: timm's own hub loading does that (honouring
the Hugging Face cache and ``HF_HUB_OFFLINE``), or a local ``checkpoint_path``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import urllib.error
import urllib.request

import fsspec

from nemo_aesthetic.atomic import atomic_open

logger = logging.getLogger(__name__)

OFFLINE_ENV = "NEMO_AESTHETIC_OFFLINE"
HOME_ENV = "NEMO_AESTHETIC_HOME"
MIRROR_ENV = "NEMO_AESTHETIC_MIRROR"


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    filename: str
    url: str
    sha256: str
    description: str


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
    mirror = os.environ.get(MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{spec.filename}" if mirror else spec.url


def resolve_weights(spec: WeightsFile, model_path: str | None = None, directory: str | None = None,
                    timeout: float = 60.0) -> str:
    """The local path of ``spec``'s weights, downloading and verifying them if needed.

    An explicit ``model_path`` is used as given (it may be a fine-tuned checkpoint of the same
    shape, so its checksum is not imposed) but must exist.
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
        digest = sha256_of(path)
        if digest == spec.sha256:
            return path
        problem = f"the cached file {path} is corrupt (sha256 {digest}, expected {spec.sha256})"
        logger.warning("%s; downloading it again from %s", problem, url)
    if offline():
        raise WeightsUnavailableError(_missing_message(spec, path, directory, url, problem, "offline mode is set"))
    try:
        _download(url, path, spec.sha256, timeout)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        raise WeightsUnavailableError(_missing_message(spec, path, directory, url, problem, str(exc))) from exc
    return path


def _download(url: str, path: str, sha256: str, timeout: float) -> None:
    logger.info("downloading %s -> %s", url, path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response, atomic_open(fsspec.filesystem("file"), path) as out:
        for block in iter(lambda: response.read(1 << 20), b""):
            h.update(block)
            out.write(block)
        if h.hexdigest() != sha256:
            # Raising inside atomic_open discards the temporary file: the cache is not poisoned.
            raise ValueError(f"downloaded file has sha256 {h.hexdigest()}, expected {sha256}")


def _missing_message(spec: WeightsFile, path: str, directory: str, url: str, problem: str | None,
                     reason: str) -> str:
    lines = [f"{spec.description}: weights file {spec.filename} is not available."]
    if problem:
        lines.append(f"Problem: {problem}.")
    lines += [
        f"Download failed: {reason}." if reason else "",
        f"Place the file at {path} (directory {directory}, set by ${HOME_ENV}),",
        f"downloaded from {url} (sha256 {spec.sha256}),",
        "or pass model_path= / --aesthetic-weights with its location.",
    ]
    return "\n".join(line for line in lines if line)
