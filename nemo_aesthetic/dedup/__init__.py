"""The semantic-deduplication engine both fronts use (NeMo Curator's SemDeDup, on Dask, CPU or GPU).

Steps, each a public piece (the 1.x stages, the legacy classes and the CLI are adapters):

:mod:`.embeddings`
    a partition's embedding column -> a unit-normalised ``(n, d)`` tensor on the worker's device,
    and a per-row reason for rows that cannot be clustered (no embedding, NaN/inf, zero vector).
:mod:`.kmeans`
    k-means over a Dask DataFrame: a k-means++ start on a small sample, then Lloyd iterations in
    which every partition sums its rows per centroid on its worker and Dask tree-reduces the
    ``k x d`` sums; every partition is then assigned on its worker. No process ever holds all
    embeddings (only the ``k x d`` centroids and the start sample travel to the client).
:mod:`.pairwise`
    per cluster, rows ranked (:class:`~.ranking.RankingStrategy`), then each row's maximum
    cosine similarity to the rows ranked before it, ``pairwise_batch_size`` columns at a time
    with torch on the worker's device; a row whose maximum is ``>= 1 - eps`` duplicates the row
    named in ``max_id`` and is the one removed.
"""
from nemo_aesthetic.dedup.embeddings import EmbeddingRows, partition_embeddings
from nemo_aesthetic.dedup.assignment import assign_partition
from nemo_aesthetic.dedup.kmeans import KMeansResult, fit_kmeans
from nemo_aesthetic.dedup.pairwise import cluster_matches, pairwise_max_similarity
from nemo_aesthetic.dedup.ranking import RankingStrategy

__all__ = ["EmbeddingRows", "KMeansResult", "RankingStrategy", "assign_partition", "cluster_matches",
           "fit_kmeans", "pairwise_max_similarity", "partition_embeddings"]
