"""The rows k-means fits on, one block per partition, and what a fit does with them: count them,
draw a sample for the k-means++ start, and sum them by nearest centroid once per Lloyd iteration.

Why blocks, and why futures (measured in bench/semdedup.py, BENCHMARKS.md): converting the
input's column of arrays to a matrix cost half of each k-means step, and each step through a Dask
DataFrame reduction cost ~0.6 s of graph building and task hand-offs on top of ~0.2 s of work.
So the rows are read and L2-normalised once into one float32 Arrow buffer per partition and,
when held, kept as futures on the workers: an iteration is then one task per block that sees
only its block, plus a tree of small sums, with the centroids scattered once. Only ``k x d``
sums cross the network. Without a distributed client (``--cluster sync``) held blocks stay in
this process. Not held (too large for memory, no ``fit_data_fraction``), each use reads the data
again through the collection, so a worker holds one partition at a time.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from nemo_aesthetic import frames
from nemo_aesthetic.dedup.embeddings import partition_embeddings, worker_device

#: Partial sums are added this many at a time, in a tree, on the workers.
SUM_FANIN = 8


#: Rows compared with the centroids at a time: the (rows x k) distances of a whole partition
#: (100k rows x 2,000 centroids: 800 MB, twice) would make a worker's memory grow with k.
NEAREST_ROWS = 8192


def nearest(vectors, centroids, norms=None):
    """For each row: (index of the nearest centroid, squared L2 distance to it, dot product with
    it), in blocks of :data:`NEAREST_ROWS` rows. ``norms``: the rows are raw and are compared as
    ``vectors / norms`` (normalised a block at a time, never all at once)."""
    import torch

    n = len(vectors)
    labels = torch.empty(n, dtype=torch.int64, device=vectors.device)
    dist2 = torch.empty(n, dtype=vectors.dtype, device=vectors.device)
    dot = torch.empty(n, dtype=vectors.dtype, device=vectors.device)
    squared = (centroids * centroids).sum(1)
    for lo in range(0, n, NEAREST_ROWS):
        x = vectors[lo:lo + NEAREST_ROWS]
        x = x if norms is None else x / norms[lo:lo + NEAREST_ROWS].unsqueeze(1)
        dots = x @ centroids.T
        lengths = torch.linalg.vector_norm(x, dim=1, keepdim=True)  # no (n, d) temporary, unlike (x * x).sum(1)
        d2, index = torch.min(lengths * lengths - 2 * dots + squared, dim=1)
        labels[lo:lo + len(x)], dist2[lo:lo + len(x)] = index, d2.clamp_min(0)
        dot[lo:lo + len(x)] = dots.gather(1, index.unsqueeze(1)).squeeze(1)
    return labels, dist2, dot


#: A block's columns of its own (names no input column will have).
VECTORS, REASON = "__fit_vectors__", "__fit_reason__"


def fit_block(frame, column, fraction, seed, keep=None, partition_info=None):
    """This partition's usable rows, L2-normalised, as one float32 Arrow column of fixed-size
    lists; ``attrs`` keep the partition's counts (rows, usable, dim). With ``fraction``, each row
    is kept with that probability (a fixed seed per partition, so a retried task draws the same
    rows). With ``keep`` (columns), every row is kept with those columns, its vector null where
    it has none usable and the reason beside it: the rows can then be written by cluster from
    the block, without reading the input again."""
    import pyarrow as pa

    rows = partition_embeddings(frame, column, device="cpu", normalise=fraction is None)
    vectors = rows.vectors if rows.vectors.ndim == 2 else np.zeros((0, 0), np.float32)
    if fraction is not None:  # only the drawn share is normalised (a copy of it, not of the partition)
        index = (partition_info or {}).get("number", 0)
        drawn = np.random.default_rng([seed, index, 1]).random(len(vectors)) < fraction
        vectors = vectors[drawn] / rows.norms[drawn].unsqueeze(1) if len(vectors) else vectors
    vectors = vectors.numpy() if hasattr(vectors, "numpy") else vectors
    dim = max(vectors.shape[1], 1)
    if keep is None:
        out = pd.DataFrame({VECTORS: pd.arrays.ArrowExtensionArray(_lists(vectors, dim))})
    else:
        out = frames.to_host(frame.loc[:, list(keep)])  # a block is pandas on the host, whatever the backend
        if rows.usable.all():
            out[VECTORS] = pd.arrays.ArrowExtensionArray(_lists(vectors, dim))
        else:  # a null vector (its slot zeros) for each row left out, and why
            full = np.zeros((len(frame), dim), np.float32)
            full[rows.usable] = vectors
            out[VECTORS] = pd.arrays.ArrowExtensionArray(_lists(full, dim, mask=~rows.usable))
            out[REASON] = pd.Series(rows.reasons, index=out.index, dtype=object)
    out.attrs.update(rows=len(frame), usable=int(rows.usable.sum()), dim=int(vectors.shape[1]))
    return out


def _lists(vectors, dim, mask=None):
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=None if mask is None else pa.array(mask))


def _vectors(frame):
    chunked = frame[VECTORS].array._pa_array
    return chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()


def block_valid(frame) -> np.ndarray:
    """Which rows of a block have a vector."""
    column = _vectors(frame)
    return np.ones(len(column), bool) if not column.null_count else column.is_valid().to_numpy(zero_copy_only=False)


def block_matrix(frame, device=None):
    """A block's vectors (:func:`fit_block`) as an (n, d) tensor on ``device`` (default: the
    worker's): on CPU a view of its Arrow buffer, no copy (unless rows without one are dropped)."""
    import pyarrow.compute as pc
    import torch

    column = _vectors(frame)
    if column.null_count:
        column = pc.filter(column, column.is_valid())
    dim = column.type.list_size
    flat = column.values.slice(column.offset * dim, len(column) * dim).to_numpy(zero_copy_only=False)
    with warnings.catch_warnings():  # Arrow hands out a read-only view; it is only read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(flat.reshape(len(column), dim)).to(device or worker_device())


def block_stats(frame):
    attrs = frame.attrs
    return pd.DataFrame({"rows": [attrs.get("rows", len(frame))], "usable": [attrs.get("usable", len(frame))],
                         "fit": [len(frame) - _vectors(frame).null_count],
                         "dim": [attrs.get("dim", -1) if len(frame) else -1]})


def _drawn(rows, fraction, seed, number):
    """The rows (of block ``number``) a k-means++ sample keeps, each with probability ``fraction``:
    the same draw whether the blocks are held or read again."""
    return rows if fraction >= 1 else rows[np.random.default_rng([seed, number]).random(len(rows)) < fraction]


def block_sample(frame, fraction, seed, number):
    """Rows of a block kept with probability ``fraction``, as a host array."""
    return _drawn(block_matrix(frame, "cpu").numpy(), fraction, seed, number)


def block_sums(frame, centroids):
    """(k, 2 + d) float64: per centroid, the count of this block's rows nearest to it, their
    squared distances, and their sum (float32 within a block of unit rows, float64 across)."""
    import torch

    x = block_matrix(frame)
    c = torch.as_tensor(np.asarray(centroids, dtype=np.float32), device=x.device)
    k, d = c.shape
    out = torch.zeros((k, 2 + d), dtype=torch.float64, device=c.device)
    if len(x):
        labels, dist2, _ = nearest(x, c)
        out[:, 0] = torch.bincount(labels, minlength=k).double()
        out[:, 1] = torch.zeros(k, dtype=torch.float32, device=c.device).index_add_(0, labels, dist2).double()
        out[:, 2:] = torch.zeros((k, d), dtype=torch.float32, device=c.device).index_add_(0, labels, x).double()
    return out.cpu().numpy()


def _add(*arrays):
    return np.sum(arrays, axis=0)


def _sums_frame(frame, centroids):
    return pd.DataFrame(block_sums(frame, centroids))


def _sum_by_centroid(frame):
    return frame.groupby(level=0).sum()


class FitRows:
    """``ddf[column]`` as fit blocks: lazy until :meth:`hold`, then held (see the module doc)."""

    def __init__(self, ddf, column: str, fraction: float | None, seed: int, keep: list[str] | None = None):
        self.keep = [c for c in keep if c != column] if keep is not None and fraction is None else None
        source = ddf[[*(self.keep or []), column]]
        meta = fit_block(source._meta, column, None, 0, self.keep).iloc[:0]
        self.collection = source.map_partitions(fit_block, column, fraction, seed, self.keep, meta=meta,
                                                enforce_metadata=False)
        self.seed = seed
        self.client, self.blocks = None, None  # held: futures (with a client) or frames
        self._stats = None

    def bytes(self) -> int:
        """The blocks' size as float32 (one pass over the data; its counts are kept)."""
        stats = self.stats()
        return int(stats["fit"].sum()) * max(int(stats["dim"].max()), 0) * 4

    def hold(self) -> None:
        from nemo_aesthetic.distributed import compute_client

        self.client = compute_client()
        if self.client is not None:
            from distributed import futures_of

            futures = futures_of(self.client.persist(self.collection))
            self.blocks = sorted(futures, key=lambda f: f.key[1] if isinstance(f.key, tuple) else 0)
        else:
            import dask

            self.blocks = list(dask.compute(*self.collection.to_delayed()))
        self._stats = None  # counted again from the held blocks: cheap, and what the fit will see

    def holds_rows(self, keep: list[str]) -> bool:
        """Whether the held blocks carry every row with the columns ``keep`` (so the rows can be
        written from them)."""
        return self.blocks is not None and self.keep is not None and list(keep) == self.keep

    def map_blocks(self, func, *args):
        """``func(block, *args, number)`` for every held block, results in block order."""
        numbers = range(len(self.blocks))
        if self.client is None:
            return [func(block, *args, n) for block, n in zip(self.blocks, numbers)]
        return self.client.gather(self.client.map(func, self.blocks, *[[a] * len(self.blocks) for a in args],
                                                  numbers, pure=False))

    def stats(self) -> pd.DataFrame:
        """One row per partition: rows, usable (with an embedding that can be clustered), fit
        (rows in the block: usable, or the drawn share), dim (-1 for an empty block)."""
        if self._stats is None:
            if self.blocks is None:
                meta = pd.DataFrame({c: pd.Series([], dtype="int64") for c in ("rows", "usable", "fit", "dim")})
                self._stats = self.collection.map_partitions(block_stats, meta=meta).compute()
            else:
                self._stats = pd.concat(self.map_blocks(_numbered_stats), ignore_index=True)
        return self._stats

    def sample(self, fraction: float) -> np.ndarray:
        """Rows drawn with probability ``fraction`` from every block, as one host array."""
        if self.blocks is None:
            meta = self.collection._meta
            drawn = self.collection.map_partitions(_sample_frame, fraction, self.seed, meta=meta,
                                                   enforce_metadata=False).compute()
            return block_matrix(drawn, "cpu").numpy()
        parts = [p for p in self.map_blocks(block_sample, fraction, self.seed) if len(p)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def sums(self, centroids: np.ndarray) -> np.ndarray:
        """One Lloyd iteration's (k, 2 + d) sums over every block (see :func:`block_sums`)."""
        if self.blocks is None:
            meta = pd.DataFrame({j: pd.Series([], dtype="float64") for j in range(2 + centroids.shape[1])})
            return self.collection.reduction(_sums_frame, chunk_kwargs={"centroids": centroids},
                                             combine=_sum_by_centroid, aggregate=_sum_by_centroid, meta=meta,
                                             split_every=SUM_FANIN).compute().to_numpy()
        if self.client is None:
            return _add(*[block_sums(block, centroids) for block in self.blocks])
        shared = self.client.scatter(centroids, broadcast=True, hash=False)
        level = self.client.map(block_sums, self.blocks, centroids=shared, pure=False)
        while len(level) > 1:
            level = [self.client.submit(_add, *level[i:i + SUM_FANIN], pure=False)
                     for i in range(0, len(level), SUM_FANIN)]
        return level[0].result()

    def release(self) -> None:
        """Frees the held blocks (the workers' memory) once the fit is done."""
        self.blocks = None


def _numbered_stats(block, number):
    return block_stats(block)


def _sample_frame(frame, fraction, seed, partition_info=None):
    return _drawn(frame, fraction, seed, (partition_info or {}).get("number", 0))
