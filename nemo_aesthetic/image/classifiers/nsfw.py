"""LAION's CLIP-based NSFW detector, in its PyTorch form.

Upstream (LAION-AI/CLIP-based-NSFW-Detector) trained a small Keras model on L2-normalised
OpenAI CLIP ViT-L/14 image embeddings. Its PyTorch port, the one NeMo Curator loads, is

    (x - mean) / sqrt(variance)          buffers ``norm.mean``, ``norm.variance`` (768)
    Linear 768-64   ReLU                 ``linear_1``
    Linear 64-512   ReLU                 ``linear_2``
    Linear 512-256  ReLU                 ``linear_3``
    Linear 256-1    Sigmoid              ``linear_4``

and outputs the probability (0-1) that an image is NSFW. The weights file
``clip_autokeras_binary_nsfw.pth`` is distributed only inside a zip attached to an upstream
issue, with no published checksum. So resolution follows the aesthetic weights' rules (explicit
``model_path``; else ``$NEMO_AESTHETIC_HOME``; else download, written atomically; offline: an error
naming file, directory and URL), except that verification is "the file loads strictly into the
architecture above" instead of a sha256.
"""
from __future__ import annotations

import io
from typing import Callable

import fsspec

from nemo_aesthetic.image.classifiers.base import ImageClassifier
from nemo_aesthetic.weights import NSFW_WEIGHTS, resolve_weights


EMBEDDING_SIZE = 768


def nsfw_model():
    """The PyTorch port's architecture (``NSFWModel``), with its state-dict key names."""
    from nemo_aesthetic.image.classifiers.torch_models import NSFWModel

    return NSFWModel()


def __getattr__(name: str):
    # NeMo Curator's names for the model classes; they need torch, importing this module does not.
    if name in ("NSFWModel", "Normalization"):
        from nemo_aesthetic.image.classifiers import torch_models

        return getattr(torch_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_nsfw_model(source):
    """The NSFW model with the weights in ``source`` (a path or a file object), eval mode, CPU."""
    import torch

    name = source if isinstance(source, str) else getattr(source, "name", "<bytes>")
    try:
        if isinstance(source, str):
            with fsspec.open(source, "rb") as f:
                state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        else:
            state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot load NSFW weights {name}: {type(exc).__name__}: {exc}") from exc
    model = nsfw_model()
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ValueError(f"{name} is not a CLIP-based NSFW detector state dict (norm.mean, norm.variance, "
                         f"linear_1..4: 768-64-512-256-1): {exc}") from exc
    return model.eval()


def resolve_nsfw_weights(model_path: str | None = None, directory: str | None = None,
                         timeout: float = 60.0) -> str:
    """The local path of the NSFW weights, downloaded (zip), extracted and checked by loading them
    if needed (:func:`nemo_aesthetic.weights.resolve_weights` does the work)."""
    return resolve_weights(NSFW_WEIGHTS, model_path, directory, timeout, verify=load_nsfw_model)


class NsfwClassifier(ImageClassifier):
    """Appends ``nsfw_score`` (probability 0-1 that the image is NSFW) from CLIP ViT-L/14 embeddings.

    Args:
        embedding_column: the column of L2-normalised 768-d embeddings.
        pred_column: the output column.
        batch_size: embeddings scored per step when used alone (-1: the whole partition).
        model_path: weights file; default ``$NEMO_AESTHETIC_HOME/clip_autokeras_binary_nsfw.pth``,
            downloaded from the upstream zip and checked by loading it if absent.
        device: "cuda", "cpu", ... (default: cuda if the worker has a GPU, else cpu).
    """

    def __init__(self, embedding_column: str = "image_embedding", pred_column: str = "nsfw_score",
                 batch_size: int = -1, model_path: str | None = None, device: str | None = None):
        super().__init__(model_name="nsfw_classifier", embedding_column=embedding_column,
                         pred_column=pred_column, pred_type=float, batch_size=batch_size,
                         embedding_size=EMBEDDING_SIZE, device=device)
        # As NeMo Curator: the default file is fetched here, on the client; an explicit path is
        # stored as given and opened on the worker (it may exist only there).
        self.model_path = self._get_default_model() if model_path is None else model_path

    @staticmethod
    def _get_default_model() -> str:
        """The default weights file, downloaded (and checked by loading it) if absent."""
        return resolve_nsfw_weights()

    def load_model(self, device: str) -> Callable:
        import torch

        if not fsspec.core.url_to_fs(self.model_path)[0].exists(self.model_path):
            raise FileNotFoundError(f"NSFW model_path does not exist on this worker: {self.model_path}")
        model = load_nsfw_model(self.model_path).to(device)

        def score(embeddings):
            with torch.inference_mode():
                return model(embeddings.to(device=device, dtype=torch.float32)).reshape(-1)

        return score
