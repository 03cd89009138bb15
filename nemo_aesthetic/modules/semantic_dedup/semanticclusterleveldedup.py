"""SemanticClusterLevelDedup (NeMo Curator 0.x's ``modules.semantic_dedup.semanticclusterleveldedup``):
per cluster of ``emb_by_clust_dir``, each row's most similar earlier-ranked row
(``<output_dir>/semdedup_pruning_tables/cluster_<k>.parquet``: ``id``, ``max_id``,
``cosine_sim_score``), then the ids within ``eps`` of one (``unique_ids_<eps>.parquet``, despite
its name the ids to REMOVE, as upstream) and ``dedup_summary_<eps>.csv``. One Dask task per cluster."""
from __future__ import annotations

import logging
import os
import shutil
from typing import Literal

import dask.bag as db
import dask.dataframe as dd
import pandas as pd
import pyarrow.parquet as pq

from nemo_aesthetic import frames
from nemo_aesthetic.datasets.doc_dataset import DocumentDataset
from nemo_aesthetic.dedup.clusters import absolute, cluster_dirs, read_cluster, write_cluster_matches
from nemo_aesthetic.dedup.ranking import RankingStrategy
from nemo_aesthetic.engine.partitions import keep_dtypes

_logger = logging.getLogger("nemo_aesthetic")


class SemanticClusterLevelDedup:
    """Upstream's arguments and defaults; ``batched_cosine_similarity`` is the pairwise block size
    (``<= 0``: one block, memory ``n x n``)."""

    def __init__(self, n_clusters: int = 1000, emb_by_clust_dir: str = "./clustering_results/embs_by_nearest_center",
                 id_column: str = "id", which_to_keep: str = "hard", sim_metric: Literal["cosine", "l2"] = "cosine",
                 output_dir: str = "./clustering_results", embedding_column: str = "embeddings",
                 batched_cosine_similarity: int = 1024, logger: logging.Logger | str = "./",
                 profile_dir: str | None = None) -> None:
        self.n_clusters = n_clusters
        self.emb_by_clust_dir = absolute(emb_by_clust_dir)
        self.id_col = id_column
        self.which_to_keep = which_to_keep
        self.sim_metric = sim_metric
        self.output_dir = absolute(output_dir)
        self.semdedup_pruning_tables_dir = os.path.join(self.output_dir, "semdedup_pruning_tables")
        self.computed_semantic_match_dfs = False
        self.embedding_column = embedding_column
        self.batched_cosine_similarity = batched_cosine_similarity
        self.logger = logger if isinstance(logger, logging.Logger) else _logger
        self.profile_dir = profile_dir
        self.ranking = RankingStrategy.by_distance(which_to_keep, sim_metric, id_column)

    def _clusters(self) -> list[tuple[int, list[str]]]:
        found = dict(cluster_dirs(self.emb_by_clust_dir, "nearest_cent"))
        return [(k, found.get(k, [])) for k in range(self.n_clusters)]

    def compute_semantic_match_dfs(self) -> None:
        tables, clusters = (os.path.join(os.path.realpath(p), "") for p in
                            (self.semdedup_pruning_tables_dir, self.emb_by_clust_dir))
        if tables.startswith(clusters) or clusters.startswith(tables):  # it is cleared first: never the input
            raise ValueError(f"output_dir {self.output_dir!r} puts semdedup_pruning_tables/ where it overlaps "
                             f"emb_by_clust_dir {self.emb_by_clust_dir!r}, which would be deleted; choose an "
                             "output_dir outside the clustering output")
        if os.path.exists(self.semdedup_pruning_tables_dir):
            self.logger.info("Removing existing directory %s", self.semdedup_pruning_tables_dir)
            shutil.rmtree(self.semdedup_pruning_tables_dir)
        os.makedirs(self.semdedup_pruning_tables_dir)
        clusters = self._clusters()
        block = self.batched_cosine_similarity if self.batched_cosine_similarity > 0 else 2**62
        args = (self.semdedup_pruning_tables_dir, self.id_col, self.embedding_column, self.ranking, block)
        db.from_sequence(clusters, npartitions=max(len(clusters), 1)).map(_match_cluster, *args).compute()
        self.computed_semantic_match_dfs = True

    def extract_dedup_data(self, eps_to_extract: float) -> DocumentDataset:
        """The ids to remove (``cosine_sim_score >= 1 - eps_to_extract``) with
        ``cosine_dist_to_cent`` and ``cluster``, written to ``<output_dir>/unique_ids_<eps>.parquet``."""
        if not self.computed_semantic_match_dfs:
            raise ValueError("Run compute_semantic_match_dfs before calling extract_dedup_data")
        if not isinstance(eps_to_extract, float):
            raise TypeError("eps_to_extract must be a float")
        path = os.path.join(self.output_dir, f"unique_ids_{eps_to_extract}.parquet")
        clusters = self._clusters()
        first = next((files[0] for _, files in clusters if files), None)
        if first is None:
            raise FileNotFoundError(f"no clustered rows under {self.emb_by_clust_dir}")
        meta = _empty_prune(first, self.id_col)
        with keep_dtypes():
            removed = dd.from_map(_prune_cluster, clusters, id_col=self.id_col,
                                  tables=self.semdedup_pruning_tables_dir, eps=eps_to_extract, meta=meta, like=meta,
                                  enforce_metadata=False)
        if os.path.exists(path):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        removed.to_parquet(path, write_index=False)
        n_removed = len(dd.read_parquet(path))
        total = sum(pd.read_parquet(f, columns=[self.id_col]).shape[0] for _, files in clusters for f in files)
        self.logger.info("DONE saving %d out of %d. Removed: %d. Epsilon: %.4f", total - n_removed, total, n_removed,
                         eps_to_extract)
        pd.DataFrame({"eps": [eps_to_extract], "kept": [total - n_removed], "removed": [n_removed],
                      "total": [total]}).to_csv(os.path.join(self.output_dir, f"dedup_summary_{eps_to_extract}.csv"),
                                                index=False)
        return DocumentDataset.read_parquet(path, backend=frames.backend())


def _match_cluster(entry, tables, id_col, embedding_col, ranking, block) -> int:
    cluster_id, files = entry
    output = os.path.join(tables, f"cluster_{cluster_id}.parquet")
    if not files:  # an empty cluster: an empty table, so every cluster has one
        pd.DataFrame({"id": [], "max_id": [], "cosine_sim_score": pd.Series([], dtype="float32")}).to_parquet(output)
        return 0
    return write_cluster_matches(files, output, id_col, embedding_col, ranking, block)


def _empty_prune(file: str, id_col: str) -> pd.DataFrame:
    """The (empty) frame one cluster's removed rows come in: the id typed as in the files."""
    schema = pq.read_schema(file)
    return (schema.empty_table().select([id_col, "cosine_dist_to_cent"]).to_pandas()
            .assign(cluster=pd.Series([], dtype="int64")))


def _prune_cluster(entry, id_col, tables, eps, like):
    cluster_id, files = entry
    if not files:
        return like
    rows = frames.to_host(read_cluster(files, [id_col, "cosine_dist_to_cent"])).assign(cluster=cluster_id)
    table = pd.read_parquet(os.path.join(tables, f"cluster_{cluster_id}.parquet"), columns=["id", "cosine_sim_score"])
    close = table[table["cosine_sim_score"] >= 1 - eps][["id"]].rename(columns={"id": id_col})
    return rows.merge(close.astype({id_col: rows[id_col].dtype}), on=id_col, how="inner")
