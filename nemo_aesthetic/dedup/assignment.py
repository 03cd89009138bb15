"""A partition's rows assigned to their nearest centroid, and written by cluster.

Why per-cluster slices: a worker's memory must stay about one partition however large the data
and however many clusters (5M x 768 on 2 workers of 4 GiB, BENCHMARKS.md). So the input's
vectors are used as read (a view of the Arrow buffer, not a normalised copy), compared with the
centroids in row blocks (:func:`~nemo_aesthetic.dedup.fit_rows.nearest`), and each cluster's
rows are normalised and turned into a table only when that cluster is written.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nemo_aesthetic import frames
from nemo_aesthetic.dedup.embeddings import partition_embeddings
from nemo_aesthetic.dedup.fit_rows import REASON, block_matrix, block_valid, nearest

DISTANCES = ("l2_dist_to_cent", "cosine_dist_to_cent")


@dataclass
class Assignment:
    """``others``: the usable rows' kept columns (not the embedding); ``vectors``: their vectors
    (unit rows, or raw ones with their ``norms``); ``labels``/``l2``/``cosine``: host arrays per
    usable row; ``left_out``: the rows that could not be clustered, with a ``reason`` (or None)."""

    others: object
    vectors: object
    norms: object
    labels: np.ndarray
    l2: np.ndarray
    cosine: np.ndarray
    left_out: object
    column: str
    keep_columns: list
    _others_table: object = None

    def clusters(self):
        """``(cluster, positions)`` of the usable rows, cluster by cluster (stable order)."""
        order = np.argsort(self.labels, kind="stable")
        cuts = np.flatnonzero(np.diff(self.labels[order])) + 1
        return [(int(self.labels[rows[0]]), rows) for rows in np.split(order, cuts)] if len(order) else []

    def table(self, positions=None):
        """The rows at ``positions`` (all by default) as an Arrow table: ``keep_columns`` (the
        embedding L2-normalised) then the two distances to the centroid."""
        import pyarrow as pa
        import torch

        positions = np.arange(len(self.labels)) if positions is None else np.asarray(positions)
        index = torch.as_tensor(positions, device=self.vectors.device)
        unit = self.vectors[index] if len(positions) else self.vectors[:0]
        if self.norms is not None:
            unit = unit / self.norms[index].unsqueeze(1)
        if self._others_table is None:  # converted once, then sliced per cluster
            self._others_table = frames.frame_to_arrow(self.others)
        others = self._others_table.take(pa.array(positions, type=pa.int64()))
        dim = max(int(unit.shape[1]) if unit.ndim == 2 else 0, 1)
        flat = pa.array(np.ascontiguousarray(unit.cpu().numpy(), dtype=np.float32).reshape(-1))
        columns = {name: others.column(name) for name in others.column_names}
        columns[self.column] = pa.FixedSizeListArray.from_arrays(flat, dim)  # a zero-copy view of `unit`
        columns[DISTANCES[0]] = pa.array(self.l2[positions])
        columns[DISTANCES[1]] = pa.array(self.cosine[positions])
        return pa.table({name: columns[name] for name in [*self.keep_columns, *DISTANCES]})

    def frame(self):
        """Every usable row as a frame (``keep_columns``, ``centroid`` and the distances)."""
        out = frames.arrow_to_frame(self.table())
        out.insert(len(self.keep_columns), "centroid", self.labels.astype(np.int32))
        return out


def assign(frame, column: str, centroids: np.ndarray, keep_columns: list[str]) -> Assignment:
    """A partition of the input assigned (its vectors as read; normalised only when written)."""
    rows = partition_embeddings(frame, column, normalise=False)
    others = [k for k in keep_columns if k != column]
    kept = frame.loc[:, others] if rows.usable.all() else frame.loc[rows.usable, others]
    left_out = None
    if not rows.usable.all():
        left_out = frame[~rows.usable].loc[:, others].copy()
        left_out["reason"] = [r for r in rows.reasons if r is not None]
    return _assigned(kept, rows.vectors, rows.norms, centroids, left_out, column, keep_columns)


def assign_held_block(block, column: str, centroids: np.ndarray, keep_columns: list[str]) -> Assignment:
    """A held block (``fit_kmeans(keep_columns=...)``) assigned: the same result from the unit
    vectors it holds, without reading or normalising the input again."""
    valid = block_valid(block)
    others = [k for k in keep_columns if k != column]
    kept = block.loc[:, others] if valid.all() else block.loc[valid, others]
    left_out = None
    if not valid.all():
        left_out = block.loc[~valid, [*others, REASON]].rename(columns={REASON: "reason"})
    return _assigned(kept, block_matrix(block), None, centroids, left_out, column, keep_columns)


def _assigned(kept, vectors, norms, centroids, left_out, column, keep_columns) -> Assignment:
    import torch

    c = torch.as_tensor(np.asarray(centroids, dtype=np.float32), device=vectors.device)
    if len(vectors):
        labels, dist2, dot = nearest(vectors, c, norms)  # one product gives the label and both distances
        cosine = 1 - dot / torch.linalg.vector_norm(c, dim=1).clamp_min(1e-12)[labels]
        labels, l2, cosine = labels.cpu().numpy(), dist2.sqrt().cpu().numpy(), cosine.cpu().numpy()
    else:
        labels, l2, cosine = np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32)
    return Assignment(others=kept, vectors=vectors, norms=norms, labels=labels, l2=l2.astype(np.float32),
                      cosine=cosine.astype(np.float32), left_out=left_out, column=column,
                      keep_columns=list(keep_columns))


def assign_partition(frame, column: str, centroids: np.ndarray, keep_columns: list[str]):
    """``frame[keep_columns]`` for its usable rows, the embedding L2-normalised, with
    ``centroid``, ``l2_dist_to_cent`` and ``cosine_dist_to_cent``; and, apart, the rows that
    could not be clustered with a ``reason`` (None when there are none)."""
    assignment = assign(frame, column, centroids, keep_columns)
    return assignment.frame(), assignment.left_out
