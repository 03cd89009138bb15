"""The classifier heads as NeMo Curator 0.x defines them (``MLP``; ``Normalization``, ``NSFWModel``).

Here, in one module that imports torch, so importing the classifier modules does not; the
classifier modules re-export these names under NeMo Curator's paths
(``image.classifiers.aesthetic.MLP``, ``image.classifiers.nsfw.NSFWModel``). State-dict key names
are the published checkpoints' (``layers.0`` ...; ``norm.mean``, ``linear_1`` ...).
"""
from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """LAION improved aesthetic predictor (v2): 768-1024-128-64-16-1, Dropout, no activations."""

    def __init__(self, input_size: int, xcol: str = "emb", ycol: str = "avg_rating"):
        super().__init__()
        self.input_size = input_size
        self.xcol = xcol
        self.ycol = ycol
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Normalization(nn.Module):
    """Keras-style feature normalisation: ``(x - mean) / sqrt(variance)``."""

    def __init__(self, shape):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("variance", torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.variance.sqrt()


class NSFWModel(nn.Module):
    """LAION CLIP-based NSFW detector (PyTorch port): normalise, 768-64-512-256-1, ReLU, sigmoid."""

    def __init__(self):
        super().__init__()
        self.norm = Normalization([768])
        self.linear_1 = nn.Linear(768, 64)
        self.linear_2 = nn.Linear(64, 512)
        self.linear_3 = nn.Linear(512, 256)
        self.linear_4 = nn.Linear(256, 1)
        self.act = nn.ReLU()
        self.act_out = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        x = self.act(self.linear_1(x))
        x = self.act(self.linear_2(x))
        x = self.act(self.linear_3(x))
        return self.act_out(self.linear_4(x))
