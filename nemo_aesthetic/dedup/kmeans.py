"""k-means on a Dask DataFrame of embeddings, with torch on each worker's device.

Why torch and not faiss or scikit-learn (measured in BENCHMARKS.md, "k-means library"): both are
faster in one process on CPU, but both fit in ONE process on data it holds, and neither has a
CUDA build on PyPI. Lloyd's iteration is a matmul, an argmin and a per-centroid sum: written in
torch it runs where each partition lives (CPU or the worker's GPU), and only ``k x d`` sums cross
the network, tree-reduced by Dask. So the fit is distributed, the memory per worker is one
partition, and the same code runs on CUDA workers.

Cosine k-means: the rows are L2-normalised first (as upstream does), so the nearest centroid by
L2 is the most similar by cosine as well.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nemo_aesthetic.dedup.embeddings import EmbeddingWidthError, partition_embeddings
from nemo_aesthetic.dedup.fit_rows import FitRows

logger = logging.getLogger("nemo_aesthetic")

#: Rows drawn to the client for the k-means++ start: this many per cluster, at least START_MIN.
START_ROWS_PER_CLUSTER = 20
START_MIN = 10_000
#: Fitting on all rows re-reads them at each iteration, unless they take less than this in memory.
PERSIST_BELOW_BYTES = 512 * 2**20


@dataclass
class KMeansResult:
    centroids: np.ndarray  # (k, d) float32, unit rows not guaranteed (means of unit rows)
    n_iter: int
    inertia: float
    rows: int  # rows read (all of them, or with fit_data_fraction the rows the share was drawn from)
    unclustered: int  # of those, rows without a usable embedding (each gets a reason when assigned)
    held: FitRows | None = None  # every row still held with its columns, for write_clusters


def kmeans_plus_plus(sample, k: int, seed: int):
    """k-means++ seeding (Arthur & Vassilvitskii) on a client-side sample (torch, CPU). Distances
    as ``|x|^2 - 2 x.c + |c|^2``: one matrix-vector product per centre, no (n, d) temporary."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(np.array(sample, dtype=np.float32))
    norms = (x * x).sum(1)

    def distance_to(i):
        return (norms - 2 * (x @ x[i]) + norms[i]).clamp_min(0)

    centers = [int(torch.randint(len(x), (1,), generator=gen))]
    closest = distance_to(centers[0])
    for _ in range(1, k):
        total = float(closest.sum())
        pick = int(torch.multinomial(closest / total, 1, generator=gen)) if total > 0 else \
            int(torch.randint(len(x), (1,), generator=gen))
        centers.append(pick)
        closest = torch.minimum(closest, distance_to(pick))
    return x[centers].numpy().copy()


def _stats(frame, column):
    rows = partition_embeddings(frame, column, device="cpu")
    return pd.DataFrame({"rows": [len(frame)], "usable": [int(rows.usable.sum())],
                         "dim": [rows.dim if rows.usable.any() else -1]})


def check_embeddings(ddf, column: str, n_clusters: int) -> tuple[int, int, int]:
    """(rows, usable rows, width) over all partitions, on the workers; a clear error for widths
    that differ between partitions or fewer usable rows than clusters."""
    meta = pd.DataFrame({"rows": pd.Series([], dtype="int64"), "usable": pd.Series([], dtype="int64"),
                         "dim": pd.Series([], dtype="int64")})
    stats = ddf.map_partitions(_stats, column, meta=meta).compute()
    return _checked(stats, column, n_clusters)


def _checked(stats, column, n_clusters, fraction=None):
    dims = sorted(set(stats["dim"]) - {-1})
    if len(dims) > 1:
        raise EmbeddingWidthError(f"embedding column {column!r} has vectors of different widths {dims} "
                                  "in different partitions: they cannot be compared")
    rows, usable = int(stats["rows"].sum()), int(stats["usable"].sum())
    if usable < n_clusters:
        raise ValueError(f"n_clusters={n_clusters} is larger than the {usable} rows with a usable embedding "
                         f"(of {rows} rows); use n_clusters <= {max(usable, 1)}")
    fit = int(stats["fit"].sum()) if "fit" in stats else usable
    if fit < n_clusters:
        raise ValueError(f"fit_data_fraction={fraction} drew {fit} of the {usable} rows with a usable embedding, "
                         f"fewer than n_clusters={n_clusters}; raise fit_data_fraction or lower n_clusters")
    return rows, usable, (dims[0] if dims else 0)


def fit_kmeans(ddf, column: str, n_clusters: int, max_iter: int = 300, tol: float = 1e-4,
               random_state: int = 42, fit_data_fraction: float | None = None,
               init: str | np.ndarray = "k-means++", hold: bool | None = None,
               keep_columns: list[str] | None = None) -> KMeansResult:
    """Fit ``n_clusters`` centroids to ``ddf[column]`` (Lloyd's iterations on the workers).

    The rows are read and normalised once into float32 blocks
    (:func:`~nemo_aesthetic.dedup.fit_rows.fit_block`). ``hold``: keep
    those blocks in the workers' memory for the iterations (always with ``fit_data_fraction``,
    which fits on that share of the rows); False re-reads them at each iteration so that worker
    memory stays one partition; None holds them when they take at most ``PERSIST_BELOW_BYTES``
    (known after one pass over the data). Stops after ``max_iter`` or when no centroid moves by
    more than ``tol`` times the mean squared spread of the data (scikit-learn's rule).

    ``keep_columns`` (the columns :func:`~nemo_aesthetic.dedup.clusters.write_clusters` will
    write): held blocks then carry every row with them, and the result's ``held`` lets the write
    skip reading the input again (it releases them).
    """
    if fit_data_fraction is not None and not 0.0 < fit_data_fraction < 1.0:
        raise ValueError(f"fit_data_fraction must be in (0, 1), got {fit_data_fraction}")
    fit = FitRows(ddf, column, fit_data_fraction, random_state, keep=keep_columns)
    if fit_data_fraction is not None:
        hold = True
    elif hold is None:  # one pass to learn the size; the data is read again only if it is held
        hold = fit.bytes() <= PERSIST_BELOW_BYTES
    if hold:
        fit.hold()
        logger.debug("k-means: fit rows held")
    stats = fit.stats()
    rows, usable, dim = _checked(stats, column, n_clusters, fit_data_fraction)
    fit_rows = int(stats["fit"].sum())
    if isinstance(init, np.ndarray):
        centroids = np.asarray(init, dtype=np.float32)
        threshold = tol / max(dim, 1)
    else:
        share = min(1.0, max(START_ROWS_PER_CLUSTER * n_clusters, START_MIN) / max(fit_rows, 1))
        sample = fit.sample(share)
        if len(sample) < n_clusters:  # a small share drew too few: take every row
            sample = fit.sample(1.0)
        logger.debug("k-means: %d rows sampled for the start", len(sample))
        centroids = kmeans_plus_plus(sample, n_clusters, random_state) if init != "random" else \
            sample[np.random.default_rng(random_state).choice(len(sample), n_clusters, replace=False)]
        threshold = tol * (float(sample.var(axis=0).mean()) if len(sample) else 0.0)
    logger.debug("k-means: started from %d centroids", len(centroids))
    inertia, n_iter = float("nan"), 0
    try:
        for n_iter in range(1, max_iter + 1):
            totals = fit.sums(centroids)  # (k, 2 + d): count, squared distances, sums
            counts, inertia, sums = totals[:, 0], float(totals[:, 1].sum()), totals[:, 2:]
            moved = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centroids).astype(np.float32)
            shift = float(((moved - centroids) ** 2).sum())
            centroids = moved
            logger.debug("k-means iteration %d: inertia %.6g, centroid shift %.3g", n_iter, inertia, shift)
            if shift <= threshold:
                break
    except BaseException:
        fit.release()
        raise
    held = fit if fit.keep is not None and fit.blocks is not None else None
    if held is None:
        fit.release()
    logger.info("k-means: %d clusters fitted on %d of %d rows (%d without a usable embedding), %d iteration(s)",
                n_clusters, fit_rows, rows, rows - usable, n_iter)
    return KMeansResult(centroids=centroids, n_iter=n_iter, inertia=inertia, rows=rows, unclustered=rows - usable,
                        held=held)
