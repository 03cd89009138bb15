"""The CLIP model's weights, checked before timm loads them.

timm loads a pretrained CLIP model from the Hugging Face hub (through its cache, honouring
``HF_HUB_OFFLINE``) or from a local ``checkpoint_path``. This module checks both up front: a
model name timm does not know (with the names it does), weights neither cached nor reachable,
a checkpoint of another architecture. Each is one clear message before any cluster starts (or,
on a worker, before timm's own download would retry for a minute), naming what to place where.
:mod:`nemo_aesthetic.weights` re-exports these names.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import time

from nemo_aesthetic.weights import CLIP_MODEL, WeightsUnavailableError, offline

logger = logging.getLogger("nemo_aesthetic.weights")


def hf_cache_dir() -> str:
    """The Hugging Face hub cache timm downloads CLIP weights into ($HF_HUB_CACHE / $HF_HOME)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hub_reachable(timeout: float = 4.0) -> tuple[bool, str]:
    """(True, "") if the hub answers at all within ``timeout``, else (False, why): a quick probe, so
    an offline machine gets the "place these files" message in seconds, not after retries."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True, ""  # it answered
    except (urllib.error.URLError, OSError) as exc:
        return False, f"cannot reach {constants.ENDPOINT}: {getattr(exc, 'reason', exc)}"
    except http.client.HTTPException as exc:  # something answered, but not in HTTP
        return False, f"{constants.ENDPOINT} does not answer in HTTP ({type(exc).__name__}: {exc})"
    return True, ""


def clip_weights_message(model_name: str, repo: str, filenames: list[str], reason: str,
                         cache_dir: str | None = None) -> str:
    """What to place where for a CLIP model whose weights timm cannot get (repo, file, cache folder)."""
    cache = cache_dir or hf_cache_dir()
    folder = "models--" + repo.replace("/", "--")
    return "\n".join([
        f"CLIP image model {model_name}: weights are not available ({reason}).",
        f"timm loads them from the Hugging Face hub repo {repo}, file {filenames[0]}"
        + (f" (or {', '.join(filenames[1:])})" if len(filenames) > 1 else "") + ",",
        f"through the Hugging Face cache {cache} (set by $HF_HUB_CACHE or $HF_HOME),",
        f"where it must sit as {os.path.join(cache, folder, 'snapshots', '<revision>', filenames[0])}.",
        f"To fill the cache, on a machine with network: hf download {repo} {filenames[0]}",
        f"and copy {os.path.join(cache, folder)} to the same place here (then HF_HUB_OFFLINE=1 works);",
        "or load a local timm state dict of the model: --clip-checkpoint PATH (the command line),",
        "TimmImageEmbedder(..., checkpoint_path=PATH) (the API).",
    ])


def check_model_name(model_name: str) -> None:
    """ValueError naming the closest models timm knows, for a name (or pretrained tag) it does not:
    checked before any work, so a typo is one line, not a traceback from every worker."""
    if model_name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return  # timm resolves these itself
    import difflib

    import timm
    from timm.models import get_pretrained_cfg

    architecture, _, tag = model_name.partition(".")
    if timm.is_model(architecture):
        if not tag:
            return
        try:
            get_pretrained_cfg(model_name)
            return
        except RuntimeError:  # an architecture timm knows, with a tag it does not
            pass
    known = timm.list_models(pretrained=True) if tag else timm.list_models()
    close = difflib.get_close_matches(model_name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else " (see timm.list_models())"
    what = f" (no pretrained tag {tag!r} for {architecture})" if tag and timm.is_model(architecture) else ""
    raise ValueError(f"timm does not know model {model_name!r}{what}{hint}")


def _clip_hub_files(model_name: str) -> tuple[str, str | None, list[str]] | None:
    """(repo, revision, candidate file names) timm would fetch ``model_name``'s weights from on
    the Hugging Face hub; None where it does not use the hub (a URL, or a prefix timm resolves)."""
    if model_name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return None
    from timm.models import get_pretrained_cfg

    check_model_name(model_name)
    cfg = get_pretrained_cfg(model_name)
    if cfg is None:
        raise ValueError(f"timm has no pretrained weights for {model_name!r}; pass --clip-checkpoint PATH "
                         "(with --model-kwargs if the architecture needs them), or pick a tagged model such as "
                         f"{CLIP_MODEL}")
    if not cfg.hf_hub_id:
        return None  # downloaded from a URL by torch.hub: nothing to check beforehand
    repo, _, revision = cfg.hf_hub_id.partition("@")
    filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    return repo, revision or None, filenames


def _cached_clip_file(repo: str, revision: str | None, filenames: list[str], cache_dir: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        cached = try_to_load_from_cache(repo, filename, cache_dir=cache_dir, revision=revision)
        if isinstance(cached, str):
            return cached
    return None


def require_clip_weights_or_hub(model_name: str, cache_dir: str | None = None) -> None:
    """Before timm loads ``model_name`` from the hub: its weights are cached, or the hub answers.

    Otherwise (offline mode, or the hub unreachable) raise :class:`WeightsUnavailableError` with
    what to place where, at once: timm's own download would retry every request with back-off
    (a minute of "Retrying in 8s" per worker) before failing with a vaguer message. Workers call
    this before each load; an unreachable hub is remembered for a minute per process, so the
    other loads of the same job fail at once too.
    """
    where = _clip_hub_files(model_name)
    if where is None or _cached_clip_file(*where, cache_dir) is not None:
        return
    repo, _, filenames = where
    reason = _offline_reason()
    if reason is None:
        reachable, why = _hub_reachable_remembered()
        reason = None if reachable else why
    if reason is not None:
        raise WeightsUnavailableError(clip_weights_message(model_name, repo, filenames, reason, cache_dir))


def _offline_reason() -> str | None:
    if not offline():
        return None
    which = [v for v in ("HF_HUB_OFFLINE", "NEMO_AESTHETIC_OFFLINE") if os.environ.get(v, "").lower() in ("1", "true", "yes")]
    return f"offline mode is set ({', '.join(which)}=1) and they are not cached"


_HUB_FAILURE: list = []  # [(monotonic time, why)] of the last failed probe in this process
HUB_FAILURE_MEMORY_S = 60.0


def _hub_reachable_remembered() -> tuple[bool, str]:
    if _HUB_FAILURE and time.monotonic() - _HUB_FAILURE[0][0] < HUB_FAILURE_MEMORY_S:
        return False, _HUB_FAILURE[0][1]
    reachable, why = hub_reachable()
    _HUB_FAILURE[:] = [] if reachable else [(time.monotonic(), why)]
    return reachable, why


def check_clip_weights(model_name: str, cache_dir: str | None = None) -> str | None:
    """Make sure timm will find the CLIP weights of ``model_name``; returns their local path if known.

    A cached file is enough. Offline (``HF_HUB_OFFLINE`` / ``NEMO_AESTHETIC_OFFLINE``) or with the
    hub unreachable, a missing file raises :class:`WeightsUnavailableError` naming the repo,
    file and cache folder, before any cluster starts. Online, the file is downloaded here the way
    timm would (``model.safetensors``, else ``pytorch_model.bin``) so the workers find it cached;
    a failed download gives the same message.
    """
    where = _clip_hub_files(model_name)
    if where is None:
        return None
    cached = _cached_clip_file(*where, cache_dir)
    if cached is not None:
        return cached
    require_clip_weights_or_hub(model_name, cache_dir)
    repo, revision, filenames = where
    from huggingface_hub import hf_hub_download
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
        raise ValueError(f"--clip-checkpoint does not exist: {path}")
    if os.path.isdir(path):
        raise ValueError(f"--clip-checkpoint is a directory, expected a weights file: {path}")
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
        raise ValueError(f"--clip-checkpoint {path} cannot be read as weights: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False, **model_kwargs)
    except Exception as exc:
        raise ValueError(f"cannot build model {model_name!r} with --model-kwargs {json.dumps(model_kwargs)}: "
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
        raise ValueError(f"--clip-checkpoint {path} does not fit {model_name} with --model-kwargs "
                         f"{json.dumps(model_kwargs)}: {'; '.join(parts)}. It must be a timm state dict of that "
                         "architecture (torch.save(model.state_dict()))")
