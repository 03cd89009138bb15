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
    rows: int  # rows clustered
    unclustered: int  # rows left out, each with a reason


def _stats(frame, column):
    rows = partition_embeddings(frame, column, device="cpu")
    return pd.DataFrame({"rows": [len(frame)], "usable": [int(rows.usable.sum())],
                         "dim": [rows.dim if rows.usable.any() else -1]})


def _sample(frame, column, fraction, seed, partition_info=None):
    """Usable rows of this partition kept with probability ``fraction`` (a fixed seed per
    partition, so a retried task draws the same rows)."""
    rows = partition_embeddings(frame, column, device="cpu")
    index = (partition_info or {}).get("number", 0)
    keep = np.random.default_rng([seed, index]).random(len(rows.vectors)) < fraction
    vectors = rows.vectors[keep].numpy()
    out = pd.DataFrame({f"e{j}": vectors[:, j] for j in range(vectors.shape[1])}) if vectors.size else None
    return out if out is not None else pd.DataFrame({})


def _partial_sums(frame, column, centroids):
    """Per centroid: the count and sum of this partition's rows nearest to it, and their
    squared distance (one row per centroid, columns count, sse, s0..s{d-1})."""
    import torch

    rows = partition_embeddings(frame, column)
    c = torch.as_tensor(centroids, device=rows.vectors.device)
    k, d = c.shape
    sums = torch.zeros((k, d), dtype=torch.float32, device=c.device)
    counts = torch.zeros(k, dtype=torch.float64, device=c.device)
    sse = torch.zeros(k, dtype=torch.float32, device=c.device)
    if len(rows.vectors):  # float32 sums within a partition (unit rows), float64 across partitions
        labels, dist2 = _nearest(rows.vectors, c)
        sums.index_add_(0, labels, rows.vectors)
        counts += torch.bincount(labels, minlength=k).double()
        sse.index_add_(0, labels, dist2)
    sums, sse = sums.double(), sse.double()
    out = pd.DataFrame(sums.cpu().numpy(), columns=[f"s{j}" for j in range(d)])
    out.insert(0, "sse", sse.cpu().numpy())
    out.insert(0, "count", counts.cpu().numpy())
    return out


def _nearest(vectors, centroids):
    """(index of the nearest centroid, squared L2 distance to it) for each row."""
    import torch

    d2 = (vectors * vectors).sum(1, keepdim=True) - 2 * vectors @ centroids.T + (centroids * centroids).sum(1)
    dist2, labels = torch.min(d2, dim=1)
    return labels, dist2.clamp_min(0)


def _sum_by_centroid(frame):
    return frame.groupby(level=0).sum()


def kmeans_plus_plus(sample, k: int, seed: int):
    """k-means++ seeding (Arthur & Vassilvitskii) on a client-side sample (torch, CPU)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(np.array(sample, dtype=np.float32))
    centers = [int(torch.randint(len(x), (1,), generator=gen))]
    closest = ((x - x[centers[0]]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(closest.sum())
        pick = int(torch.multinomial(closest / total, 1, generator=gen)) if total > 0 else \
            int(torch.randint(len(x), (1,), generator=gen))
        centers.append(pick)
        closest = torch.minimum(closest, ((x - x[pick]) ** 2).sum(1))
    return x[centers].numpy().copy()


def check_embeddings(ddf, column: str, n_clusters: int) -> tuple[int, int, int]:
    """(rows, usable rows, width) over all partitions, on the workers; a clear error for widths
    that differ between partitions or fewer usable rows than clusters."""
    meta = pd.DataFrame({"rows": pd.Series([], dtype="int64"), "usable": pd.Series([], dtype="int64"),
                         "dim": pd.Series([], dtype="int64")})
    stats = ddf.map_partitions(_stats, column, meta=meta).compute()
    dims = sorted(set(stats["dim"]) - {-1})
    if len(dims) > 1:
        raise EmbeddingWidthError(f"embedding column {column!r} has vectors of different widths {dims} "
                                  "in different partitions: they cannot be compared")
    rows, usable = int(stats["rows"].sum()), int(stats["usable"].sum())
    if usable < n_clusters:
        raise ValueError(f"n_clusters={n_clusters} is larger than the {usable} rows with a usable embedding "
                         f"(of {rows} rows); use n_clusters <= {max(usable, 1)}")
    return rows, usable, (dims[0] if dims else 0)


def fit_kmeans(ddf, column: str, n_clusters: int, max_iter: int = 300, tol: float = 1e-4,
               random_state: int = 42, fit_data_fraction: float | None = None,
               init: str | np.ndarray = "k-means++") -> KMeansResult:
    """Fit ``n_clusters`` centroids to ``ddf[column]`` (Lloyd's iterations on the workers).

    ``fit_data_fraction``: fit on that share of the rows (drawn on the workers and kept in their
    memory for the iterations); None fits on all rows, read again at each iteration so worker
    memory stays one partition. Stops after ``max_iter`` or when no centroid moves by more than
    ``tol`` times the mean squared spread of the data (scikit-learn's rule).
    """
    rows, usable, dim = check_embeddings(ddf, column, n_clusters)
    fit = ddf[[column]]  # a Parquet read then loads this column only
    if fit_data_fraction is not None:
        if not 0.0 < fit_data_fraction < 1.0:
            raise ValueError(f"fit_data_fraction must be in (0, 1), got {fit_data_fraction}")
        fit = _held_on_workers(fit.map_partitions(_keep_share, fit_data_fraction, random_state, meta=fit._meta))
    elif usable * dim * 4 <= PERSIST_BELOW_BYTES:  # small: keep it in the workers' memory, not re-read
        fit = _held_on_workers(fit)
    if isinstance(init, np.ndarray):
        centroids = np.asarray(init, dtype=np.float32)
    else:
        target = max(START_ROWS_PER_CLUSTER * n_clusters, START_MIN)
        share = min(1.0, target / max(usable, 1))
        meta = pd.DataFrame({f"e{j}": pd.Series([], dtype="float32") for j in range(dim)})
        sample = ddf.map_partitions(_sample, column, share, random_state, meta=meta).compute().to_numpy()
        if len(sample) < n_clusters:  # a small share drew too few: take every usable row
            sample = ddf.map_partitions(_sample, column, 1.0, random_state, meta=meta).compute().to_numpy()
        centroids = kmeans_plus_plus(sample, n_clusters, random_state) if init != "random" else \
            sample[np.random.default_rng(random_state).choice(len(sample), n_clusters, replace=False)]
        spread = float(sample.var(axis=0).mean()) if len(sample) else 0.0
    threshold = tol * (spread if not isinstance(init, np.ndarray) else 1.0 / max(dim, 1))
    meta = pd.DataFrame({c: pd.Series([], dtype="float64") for c in ["count", "sse"] + [f"s{j}" for j in range(dim)]})
    inertia, n_iter = float("nan"), 0
    for n_iter in range(1, max_iter + 1):
        totals = fit.reduction(_partial_sums, chunk_kwargs={"column": column, "centroids": centroids},
                               combine=_sum_by_centroid, aggregate=_sum_by_centroid, meta=meta,
                               split_every=8).compute()
        counts = totals["count"].to_numpy()
        sums = totals[[f"s{j}" for j in range(dim)]].to_numpy()
        inertia = float(totals["sse"].sum())
        moved = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centroids).astype(np.float32)
        shift = float(((moved - centroids) ** 2).sum())
        centroids = moved
        logger.debug("k-means iteration %d: inertia %.6g, centroid shift %.3g", n_iter, inertia, shift)
        if shift <= threshold:
            break
    logger.info("k-means: %d clusters over %d rows (%d without a usable embedding), %d iteration(s)",
                n_clusters, usable, rows - usable, n_iter)
    return KMeansResult(centroids=centroids, n_iter=n_iter, inertia=inertia, rows=usable, unclustered=rows - usable)


def _held_on_workers(ddf):
    """``ddf`` computed once and kept in the workers' memory, as a collection of its futures (a
    plain ``persist()`` of a projected Parquet read lost its keys in later reductions here)."""
    import dask.dataframe as dd
    from distributed import futures_of

    from nemo_aesthetic.engine.partitions import keep_dtypes

    futures = futures_of(ddf.persist())
    with keep_dtypes():  # (the embeddings stay arrays)
        return dd.from_delayed(futures, meta=ddf._meta, verify_meta=False) if futures else ddf


def _keep_share(frame, fraction, seed, partition_info=None):
    index = (partition_info or {}).get("number", 0)
    return frame[np.random.default_rng([seed, index, 1]).random(len(frame)) < fraction]


def assign_partition(frame, column: str, centroids: np.ndarray, keep_columns: list[str]):
    """``frame[keep_columns]`` with the embedding L2-normalised and ``centroid``,
    ``l2_dist_to_cent``, ``cosine_dist_to_cent`` added, for its usable rows; and, apart, the rows
    that could not be clustered with a ``reason`` (None when there are none)."""
    import torch

    from nemo_aesthetic import frames

    rows = partition_embeddings(frame, column)
    c = torch.as_tensor(centroids, device=rows.vectors.device)
    usable = rows.usable
    out = frame[usable].loc[:, keep_columns] if len(frame) else frame.loc[:, keep_columns]
    if len(rows.vectors):
        labels, dist2 = _nearest(rows.vectors, c)
        unit = c / torch.linalg.vector_norm(c, dim=1, keepdim=True).clamp_min(1e-12)
        cosine = 1 - (rows.vectors * unit[labels]).sum(1)
        labels, l2, cosine = labels.cpu().numpy(), dist2.sqrt().cpu().numpy(), cosine.cpu().numpy()
    else:
        labels, l2, cosine = (np.zeros(0, dtype=np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32))
    out = out.copy()
    out[column] = frames.embeddings_to_series(rows.vectors.cpu().numpy(), np.ones(len(out), bool),
                                              out.index, like=frame) if len(out) else out[column]
    out["centroid"] = labels.astype(np.int32)
    out["l2_dist_to_cent"] = l2.astype(np.float32)
    out["cosine_dist_to_cent"] = cosine.astype(np.float32)
    left_out = None
    if not usable.all():
        left_out = frame[~usable].loc[:, [k for k in keep_columns if k != column]].copy()
        left_out["reason"] = [r for r in rows.reasons if r is not None]
    return out, left_out
