"""The LAION improved aesthetic predictor (v2), folded into one mat-vec.

Upstream is an MLP ``Linear(768,1024) Dropout Linear(1024,128) Dropout Linear(128,64) Dropout
Linear(64,16) Linear(16,1)`` with no activations, trained on L2-normalised OpenAI CLIP ViT-L/14
image embeddings; it outputs a score of roughly 1-10. With no activations and Dropout being the
identity at inference, the whole stack is one affine map ``score = x . w + b``. We load the
state dict into the upstream architecture (so any checkpoint of that shape loads, and a wrong
file fails loudly), compose the layers once in float64, and score with that one vector: the
same numbers (to ~1e-6) at a small fraction of the cost.
"""
from __future__ import annotations

from typing import Callable

import fsspec
import numpy as np

from nemo_aesthetic.image.classifiers.base import ImageClassifier
from nemo_aesthetic.weights import AESTHETIC_WEIGHTS, resolve_weights

EMBEDDING_SIZE = 768


def upstream_mlp():
    """The upstream architecture, layer for layer (``layers.0`` ... ``layers.7``)."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(EMBEDDING_SIZE, 1024), nn.Dropout(0.2),
        nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


def load_upstream(path: str):
    """The upstream MLP with the weights at ``path``, in eval mode (float32)."""
    import torch

    try:
        with fsspec.open(path, "rb") as f:  # local path or any fsspec URL
            if path.endswith(".safetensors"):  # NeMo Curator 1.x's copy (ttj/sac-logos-ava1-l14-linearMSE)
                from safetensors.torch import load as load_safetensors

                state = load_safetensors(f.read())
            else:
                state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot load aesthetic weights {path}: {type(exc).__name__}: {exc}") from exc
    state = {k.removeprefix("layers."): v for k, v in state.items()}
    model = upstream_mlp()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path} is not a LAION aesthetic predictor state dict "
                         f"(layers.0..7, 768-1024-128-64-16-1): {exc}") from exc
    return model.eval()


def fold_affine(model) -> tuple[np.ndarray, float]:
    """Compose the MLP's linear layers into ``(w, b)`` with ``model(x) == x @ w + b``, in float64."""
    from torch import nn

    w = np.eye(EMBEDDING_SIZE)
    b = np.zeros(EMBEDDING_SIZE)
    for layer in model:
        if isinstance(layer, nn.Linear):
            W = layer.weight.detach().double().numpy()
            bias = layer.bias.detach().double().numpy()
            w, b = w @ W.T, b @ W.T + bias
        elif not isinstance(layer, nn.Dropout):
            raise ValueError(f"cannot fold a {type(layer).__name__}: the stack must be affine")
    return w[:, 0], float(b[0])


class AestheticClassifier(ImageClassifier):
    """Appends ``aesthetic_score`` (roughly 0-10) from CLIP ViT-L/14 image embeddings.

    Args:
        embedding_column: the column of L2-normalised 768-d embeddings.
        pred_column: the output column.
        batch_size: embeddings scored per step when used alone (-1: the whole partition).
        model_path: weights file; default ``$NEMO_AESTHETIC_HOME/sac+logos+ava1-l14-linearMSE.pth``,
            downloaded from the upstream repository and verified if absent.
    """

    def __init__(self, embedding_column: str = "image_embedding", pred_column: str = "aesthetic_score",
                 batch_size: int = -1, model_path: str | None = None, device: str | None = None):
        super().__init__(model_name="aesthetic_classifier", embedding_column=embedding_column,
                         pred_column=pred_column, batch_size=batch_size, embedding_size=EMBEDDING_SIZE,
                         device=device)
        # Resolved here, on the client, so a missing file fails before any work is scheduled.
        self.requested_model_path = model_path
        self.model_path = resolve_weights(AESTHETIC_WEIGHTS, model_path)

    def load_model(self, device: str) -> Callable:
        import torch

        path = self.model_path
        if not fsspec.core.url_to_fs(path)[0].exists(path):  # a worker on another machine: resolve (and cache) it there
            path = resolve_weights(AESTHETIC_WEIGHTS, self.requested_model_path)
        w, b = fold_affine(load_upstream(path))
        # Folded in float64, applied as one float32 mat-vec: upcasting an (n, 768) batch to float64
        # costs ~10x the product itself (memory traffic), while the float32 product of the folded
        # vector stays within ~1e-6 of the float64 one (the upstream float32 MLP's own rounding).
        weight = torch.as_tensor(w, dtype=torch.float32, device=device)

        def score(embeddings):
            return (embeddings.to(torch.float32) @ weight).to(torch.float64) + b

        return score
