"""The LAION aesthetic predictors, each folded into one mat-vec.

``head="v2"`` (default) is the improved aesthetic predictor; ``head="v1"`` is LAION-Aesthetics V1,
one ``nn.Linear(d, 1)`` per OpenAI CLIP backbone (ViT-L/14, B/16, B/32), the head LAION-5B's
``aesthetic`` column was made with. V1 follows the embedder's backbone (``resolve_head``).

v2: upstream is an MLP ``Linear(768,1024) Dropout Linear(1024,128) Dropout Linear(128,64) Dropout
Linear(64,16) Linear(16,1)`` with no activations, trained on L2-normalised OpenAI CLIP ViT-L/14
image embeddings; it outputs a score of roughly 1-10. With no activations and Dropout being the
identity at inference, the whole stack is one affine map ``score = x . w + b``. We load the
state dict into the upstream architecture (so any checkpoint of that shape loads, and a wrong
file fails loudly), compose the layers once in float64, and score with that one vector: the
same numbers (to ~1e-6) at a small fraction of the cost.
"""
from __future__ import annotations

import re
from typing import Callable

import fsspec
import numpy as np

from nemo_aesthetic.image.classifiers.base import ImageClassifier
from nemo_aesthetic.weights import AESTHETIC_V1_WEIGHTS, AESTHETIC_WEIGHTS, resolve_weights

EMBEDDING_SIZE = 768

#: Concrete heads: (weights, embedding width, the embeddings they were trained on).
HEADS = {
    "v2": (AESTHETIC_WEIGHTS, 768, "OpenAI CLIP ViT-L/14"),
    "v1-l14": (AESTHETIC_V1_WEIGHTS["vit_l_14"], 768, "OpenAI CLIP ViT-L/14"),
    "v1-b16": (AESTHETIC_V1_WEIGHTS["vit_b_16"], 512, "OpenAI CLIP ViT-B/16"),
    "v1-b32": (AESTHETIC_V1_WEIGHTS["vit_b_32"], 512, "OpenAI CLIP ViT-B/32"),
}
#: Every ``head=`` value: the concrete ones, and "v1" = the V1 head of the embedder's backbone.
HEAD_CHOICES = ("v2", "v1", "v1-l14", "v1-b16", "v1-b32")


def resolve_head(head: str, model_name: str | None = None) -> str:
    """The concrete head for ``head`` used after the timm model ``model_name``.

    "v1" picks the V1 head of the backbone (``vit_base_patch32_clip_224.openai`` -> "v1-b32"),
    and ViT-L/14 when there is no embedder to follow (standalone scoring); other heads are kept.
    """
    if head not in HEAD_CHOICES:
        raise ValueError(f"head must be one of {', '.join(HEAD_CHOICES)}, not {head!r}")
    if head != "v1":
        return head
    if model_name is None:
        return "v1-l14"
    match = re.match(r"vit_(base|large)_patch(14|16|32)_", model_name.split("/")[-1])
    concrete = match and f"v1-{match.group(1)[0]}{match.group(2)}"
    if concrete not in HEADS:
        raise ValueError(f"head='v1' has LAION-Aesthetics V1 heads for OpenAI CLIP ViT-L/14, ViT-B/16 and "
                         f"ViT-B/32 only, and {model_name!r} is none of them; pass one of "
                         f"{', '.join(h for h in HEADS if h != 'v2')} to choose a head explicitly")
    return concrete


def upstream_mlp():
    """The upstream architecture, layer for layer (``MLP(768).layers``: ``0`` ... ``7``)."""
    from nemo_aesthetic.image.classifiers.torch_models import MLP

    return MLP(EMBEDDING_SIZE).layers


def __getattr__(name: str):
    # NeMo Curator's name for the model class; it needs torch, importing this module does not.
    if name == "MLP":
        from nemo_aesthetic.image.classifiers.torch_models import MLP

        return MLP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def load_linear(path: str, dim: int):
    """A V1 head: ``nn.Linear(dim, 1)`` with the state dict at ``path`` (``weight``, ``bias``)."""
    import torch
    from torch import nn

    try:
        with fsspec.open(path, "rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot load aesthetic weights {path}: {type(exc).__name__}: {exc}") from exc
    model = nn.Sequential(nn.Linear(dim, 1))
    try:
        model[0].load_state_dict(state)
    except (RuntimeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a LAION-Aesthetics V1 state dict (weight (1, {dim}), bias (1,)): "
                         f"{exc}") from exc
    return model.eval()


def fold_affine(model) -> tuple[np.ndarray, float]:
    """Compose the MLP's linear layers into ``(w, b)`` with ``model(x) == x @ w + b``, in float64."""
    from torch import nn

    dim = next(layer for layer in model if isinstance(layer, nn.Linear)).in_features
    w = np.eye(dim)
    b = np.zeros(dim)
    for layer in model:
        if isinstance(layer, nn.Linear):
            W = layer.weight.detach().double().numpy()
            bias = layer.bias.detach().double().numpy()
            w, b = w @ W.T, b @ W.T + bias
        elif not isinstance(layer, nn.Dropout):
            raise ValueError(f"cannot fold a {type(layer).__name__}: the stack must be affine")
    return w[:, 0], float(b[0])


class AestheticClassifier(ImageClassifier):
    """Appends ``aesthetic_score`` (roughly 0-10) from L2-normalised CLIP image embeddings.

    Args:
        embedding_column: the column of L2-normalised embeddings (768-d for v2 and ViT-L/14).
        pred_column: the output column.
        batch_size: embeddings scored per step when used alone (-1: the whole partition).
        model_path: weights file; default ``$NEMO_AESTHETIC_HOME/sac+logos+ava1-l14-linearMSE.pth``,
            downloaded from the upstream repository and verified if absent (for V1 heads, that
            head's ``sa_0_4_vit_*_linear.pth`` from LAION-AI/aesthetic-predictor).
        device: "cuda", "cpu", ... (default: cuda if the worker has a GPU, else cpu).
        head: "v2" (the improved predictor, ViT-L/14), or LAION-Aesthetics V1: "v1" follows the
            backbone of the embedder it is fused into (ViT-L/14 when used alone), "v1-l14",
            "v1-b16", "v1-b32" choose one.
    """

    def __init__(self, embedding_column: str = "image_embedding", pred_column: str = "aesthetic_score",
                 batch_size: int = -1, model_path: str | None = None, device: str | None = None,
                 head: str = "v2"):
        self.head = head
        self.requested_model_path = model_path
        super().__init__(model_name="aesthetic_classifier", embedding_column=embedding_column,
                         pred_column=pred_column, pred_type=float, batch_size=batch_size,
                         embedding_size=EMBEDDING_SIZE, device=device)
        self._use_head(resolve_head(head))

    def _use_head(self, concrete: str) -> None:
        self.weights, self.embedding_size, self.expected_embeddings = HEADS[concrete]
        self.concrete_head = concrete
        # As NeMo Curator: the default file is fetched here, on the client (so a missing one fails
        # before any work is scheduled); an explicit path is stored as given and opened on the
        # worker, where it may be the only place it exists.
        self.model_path = self.requested_model_path if self.requested_model_path is not None else self._default_path()

    def _default_path(self) -> str:
        return self._get_default_model() if self.concrete_head == "v2" else resolve_weights(self.weights, None)

    @staticmethod
    def _get_default_model() -> str:
        """The default (v2) weights file, downloaded and sha256-verified if absent (see weights.py)."""
        return resolve_weights(AESTHETIC_WEIGHTS, None)

    def follow_backbone(self, model_name: str) -> None:
        """Called by an embedder this classifier is fused into: "v1" takes that backbone's head."""
        concrete = resolve_head(self.head, model_name)
        if concrete != self.concrete_head:
            self._use_head(concrete)

    def check_embedding_dim(self, dim: int, source: str = "the embedding column") -> None:
        try:
            super().check_embedding_dim(dim, source)
        except ValueError as exc:
            fits = [h for h, (_, width, _) in HEADS.items() if width == dim and h.startswith(self.head[:2])]
            hint = f"; for {dim}-d embeddings pass " + " or ".join(f"head={h!r}" for h in fits) if fits else ""
            raise ValueError(f"{exc}{hint}") from None

    def load_model(self, device: str) -> Callable:
        import torch

        path = self.model_path
        if not fsspec.core.url_to_fs(path)[0].exists(path):
            if self.requested_model_path is not None:
                raise FileNotFoundError(f"aesthetic model_path does not exist on this worker: {path}")
            path = self._default_path()  # a worker on another machine: resolve (and cache) it there
        model = load_upstream(path) if self.concrete_head == "v2" else load_linear(path, self.embedding_size)
        w, b = fold_affine(model)
        # Folded in float64, applied as one float32 mat-vec: upcasting an (n, 768) batch to float64
        # costs ~10x the product itself (memory traffic), while the float32 product of the folded
        # vector stays within ~1e-6 of the float64 one (the upstream float32 MLP's own rounding).
        weight = torch.as_tensor(w, dtype=torch.float32, device=device)

        def score(embeddings):
            return (embeddings.to(torch.float32) @ weight).to(torch.float64) + b

        return score


#: Where the LAION predictors' scores of real images lie, on their nominal 0-10 scale: a threshold
#: outside it keeps (nearly) everything or nothing. NeMo Curator 1.x's default score_threshold=0.5
#: is below it.
TYPICAL_SCORES = (1.0, 9.0)


def threshold_warning(threshold: float, option: str, lowest: float | None = None,
                      highest: float | None = None) -> str | None:
    """One line when ``threshold`` (as ``option`` names it) keeps every score or none: compared
    with the lowest and highest of the scores at hand, or, without them, with :data:`TYPICAL_SCORES`
    ("nearly"). None when it cuts."""
    known = lowest is not None and highest is not None
    low, high = (lowest, highest) if known else TYPICAL_SCORES
    if threshold <= low:
        what = "every scored row" if known else "nearly every image"
    elif threshold > high:
        what = "no row" if known else "nearly no image"
    else:
        return None
    where = f"the scores here range {low:.2f} to {high:.2f}" if known else f"real images score about {low:g} to {high:g}"
    return (f"{option} {threshold:g} keeps {what}: {where} on the LAION aesthetic predictor's 0-10 scale "
            "(LAION-Aesthetics kept >= 5, 6 or 6.5)")
