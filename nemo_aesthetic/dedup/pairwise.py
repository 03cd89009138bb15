"""Per cluster: each row's most similar row among those ranked before it, in column blocks."""
from __future__ import annotations

import numpy as np

from nemo_aesthetic.dedup.embeddings import partition_embeddings


def pairwise_max_similarity(vectors, batch_size: int = 1024):
    """For unit rows ``vectors`` (n, d) in keeping order: ``(max_sim, max_idx)`` where row j's
    maximum cosine similarity is taken over rows i < j (0 and index 0 for the first row).

    ``batch_size`` columns at a time, so memory is ``n x batch_size``, not ``n x n``; runs on the
    tensor's device (the worker's GPU when it has one)."""
    import torch

    n = vectors.shape[0]
    max_sim = torch.zeros(n, dtype=torch.float32, device=vectors.device)
    max_idx = torch.zeros(n, dtype=torch.int64, device=vectors.device)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        block = vectors[:stop] @ vectors[start:stop].T  # rows after `stop` never count for these columns
        # keep only i < j: row i (global) against column j (global start + c)
        block = torch.triu(block, diagonal=1 - start)
        values, index = torch.max(block, dim=0)
        max_sim[start:stop], max_idx[start:stop] = values, index
    return max_sim, max_idx


def cluster_matches(frame, id_field: str, embedding_field: str, ranking, batch_size: int = 1024,
                    device: str | None = None):
    """One cluster's rows -> a pandas frame ``id``, ``max_id``, ``cosine_sim_score`` in keeping
    order: ``max_id`` is the earlier-ranked row most similar to ``id`` (itself for the first)."""
    import pandas as pd

    from nemo_aesthetic import frames

    ranked = ranking.rank_cluster(frame)
    if len(ranked) == 0:
        return pd.DataFrame({"id": pd.Series([], dtype=object), "max_id": pd.Series([], dtype=object),
                             "cosine_sim_score": pd.Series([], dtype="float32")})
    rows = partition_embeddings(ranked, embedding_field, device=device)
    ids = frames.to_host(ranked[id_field]).reset_index(drop=True)
    if not rows.usable.all():  # clusters come from assignment, which keeps usable rows only
        raise ValueError(f"cluster has {int((~rows.usable).sum())} row(s) without a usable embedding")
    max_sim, max_idx = pairwise_max_similarity(rows.vectors, batch_size)
    max_idx = max_idx.cpu().numpy()
    if len(ids) == 1:
        max_idx = np.zeros(1, dtype=np.int64)
    return pd.DataFrame({"id": ids.to_numpy(), "max_id": ids.to_numpy()[max_idx],
                         "cosine_sim_score": max_sim.cpu().numpy().astype(np.float32)})
