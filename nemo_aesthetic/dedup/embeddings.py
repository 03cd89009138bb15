"""A partition's embedding column as a unit-normalised tensor, with a reason for each row left out."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from nemo_aesthetic import frames

#: Reasons a row is not clustered (and so never reported as a duplicate, and never removed).
NO_EMBEDDING = "no embedding"
NOT_FINITE = "embedding has NaN or inf"
ZERO_VECTOR = "embedding is a zero vector"


class EmbeddingWidthError(ValueError):
    """Embeddings of different widths in one dataset: they cannot be compared."""


@dataclass
class EmbeddingRows:
    """``vectors``: the usable rows, L2-normalised, float32, on ``device``; ``usable``: a host
    bool mask over the partition's rows; ``reasons``: None or a reason for each row. Asked not
    to normalise, ``vectors`` are the rows as read (a read-only view where possible) and
    ``norms`` their L2 norms."""

    vectors: "object"
    usable: np.ndarray
    reasons: list
    norms: "object" = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1]) if self.vectors.ndim == 2 else 0


def worker_device() -> str:
    """Where this worker computes: its GPU when it has one (a dask-cuda worker pins one)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def partition_embeddings(frame, column: str, device: str | None = None, where: str = "",
                         normalise: bool = True) -> EmbeddingRows:
    """``frame[column]`` -> :class:`EmbeddingRows`. Rows with different widths in one partition
    raise :class:`EmbeddingWidthError` naming ``where`` (a file or partition). ``normalise``
    False spares the copy a normalised matrix takes (a partition's size again)."""
    import torch

    if column not in frame.columns:
        raise KeyError(f"embedding column {column!r} not found{' in ' + where if where else ''}; "
                       f"columns: {list(frame.columns)}")
    try:
        matrix, valid = frames.embeddings_to_matrix(frame[column])
    except ValueError as exc:
        raise EmbeddingWidthError(f"{column!r}: {exc}{' in ' + where if where else ''}; embeddings of different "
                                  "widths cannot be compared") from None
    device = device or worker_device()
    if hasattr(matrix, "__cuda_array_interface__"):  # CuPy (a cuDF partition): numpy cannot take it
        source = torch.as_tensor(matrix, device="cuda")
        owned = False
    elif not normalise:  # only read: a view, even of a read-only Arrow buffer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            source, owned = torch.from_numpy(np.asarray(matrix, dtype=np.float32)), False
    else:
        writable = np.require(matrix, requirements="W")  # Arrow's views are read-only: then a copy
        source, owned = torch.as_tensor(writable), writable is not matrix
    tensor = source.to(device=device, dtype=torch.float32)
    owned = owned or tensor is not source  # a copy of our own may be normalised in place
    valid = torch.as_tensor(np.asarray(valid.get() if hasattr(valid, "get") else valid, dtype=bool))  # CuPy -> host
    valid = valid.to(tensor.device)
    finite, norms = _finite_rows_and_norms(tensor, valid)
    usable = valid & finite & (norms > 0)
    reasons = None
    if not bool(usable.all()):
        host_valid, host_finite = valid.cpu().numpy(), finite.cpu().numpy()
        reasons = [None if ok else NO_EMBEDDING if not v else NOT_FINITE if not f else ZERO_VECTOR
                   for ok, v, f in zip(usable.cpu().numpy(), host_valid, host_finite)]
    if not normalise:
        vectors, norms = (tensor, norms) if bool(usable.all()) else (tensor[usable], norms[usable])
        return EmbeddingRows(vectors=vectors, usable=usable.cpu().numpy(), reasons=reasons or [None] * len(frame),
                             norms=norms)
    if tensor.ndim != 2:
        vectors = tensor
    elif bool(usable.all()):  # the usual case: no row to drop, no copy to make for it
        vectors = tensor.div_(norms.unsqueeze(1)) if owned else tensor / norms.unsqueeze(1)
    else:
        vectors = tensor[usable] / norms[usable].unsqueeze(1)
    return EmbeddingRows(vectors=vectors, usable=usable.cpu().numpy(), reasons=reasons or [None] * len(frame))


def _finite_rows_and_norms(tensor, valid):
    """(rows with only finite values, their L2 norms). The norms are computed once over all rows;
    only rows whose norm is not finite (NaN/inf inside, or an overflow) are looked at again, so the
    usual all-finite partition costs one pass, not three."""
    import torch

    if not tensor.numel():
        return valid.clone(), valid.float()
    norms = torch.linalg.vector_norm(tensor, dim=1)
    finite = torch.ones_like(valid)
    suspect = ~torch.isfinite(norms)
    if bool(suspect.any()):
        finite[suspect] = torch.isfinite(tensor[suspect]).all(dim=1)
        norms[suspect] = torch.linalg.vector_norm(torch.nan_to_num(tensor[suspect]), dim=1)
    return finite, norms
