"""Embeddings with planted near-duplicates, for the dedup tests of both fronts."""
import numpy as np

DIM = 64
EPS = 0.01  # similarity threshold 0.99
#: cosine similarity of each planted kind to its original
EXACT, NEAR, OUTSIDE = 1.0, 0.995, 0.985


def _rotated(v, cos, rng):
    """A unit vector at exactly ``cos`` from unit ``v``."""
    u = rng.standard_normal(len(v))
    u -= u.dot(v) * v
    u /= np.linalg.norm(u)
    return cos * v + np.sqrt(1 - cos ** 2) * u


def planted_embeddings(n_base: int = 300, n_each: int = 6, seed: int = 0):
    """``(ids, vectors, expected)``: ``n_base`` random unit vectors (pairwise similarity far below
    0.99 in 64 dimensions), plus ``n_each`` exact copies, near copies (0.995) and copies just
    outside eps (0.985) of distinct originals; ``expected`` is ``{copy id: original id}`` for the
    exact and near copies, the rows of which exactly one must go."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_base, DIM))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    ids = [f"img{i:04d}" for i in range(n_base)]
    vectors = list(base)
    expected = {}
    originals = rng.choice(n_base, 3 * n_each, replace=False)
    for kind, cos, chosen in (("exact", EXACT, originals[:n_each]), ("near", NEAR, originals[n_each:2 * n_each]),
                              ("outside", OUTSIDE, originals[2 * n_each:])):
        for i in chosen:
            copy = base[i].copy() if cos == 1.0 else _rotated(base[i], cos, rng)
            ids.append(f"{kind}{i:04d}")
            vectors.append(copy * rng.uniform(0.5, 2.0))  # scale must not matter: cosine
            if kind != "outside":
                expected[ids[-1]] = ids[i]
    order = rng.permutation(len(ids))  # copies spread over the files, not next to their originals
    return [ids[i] for i in order], np.asarray(vectors, dtype=np.float32)[order], expected
