"""Resources a stage asks for (NeMo Curator 1.x's ``nemo_curator.stages.resources``).

On Dask, a stage's ``gpus`` share becomes the partition task's ``resources={"GPU": x}`` when the
workers advertise a ``GPU`` resource (``dask worker --resources GPU=1``); otherwise it is
ignored. ``cpus`` is informational (Dask runs one task per worker thread).
"""
from __future__ import annotations

from dataclasses import dataclass


def _gpu_memory_gb() -> float:
    try:
        import torch

        return torch.cuda.get_device_properties(0).total_memory / 2**30
    except Exception:  # no GPU here: upstream's fallback
        return 24.0


@dataclass
class Resources:
    """``cpus`` cores, and either ``gpus`` (a share or count of GPUs) or ``gpu_memory_gb``
    (converted to a share of the local GPU's memory, as upstream does)."""

    cpus: float = 1.0
    gpu_memory_gb: float = 0.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.gpus > 0 and self.gpu_memory_gb > 0:
            raise ValueError("Cannot specify both gpus and gpu_memory_gb. Please use gpus for multi-GPU stages "
                             "and gpu_memory_gb for single-GPU stages.")
        if self.gpu_memory_gb > 0:
            self.gpus = round(self.gpu_memory_gb / _gpu_memory_gb(), 1)
            if self.gpus > 1:
                raise ValueError("gpu_memory_gb is too large for a single GPU. Please use gpus for multi-GPU stages.")

    @property
    def requires_gpu(self) -> bool:
        return self.gpus > 0 or self.gpu_memory_gb > 0
