"""ClusteringModel (NeMo Curator 0.x's ``modules.semantic_dedup.clusteringmodel``): k-means over a
DocumentDataset's embedding column, on the workers (:mod:`nemo_aesthetic.dedup`), written as
``<clustering_output_dir>/embs_by_nearest_center/nearest_cent=<k>/`` plus ``kmeans_centroids.npy``."""
from __future__ import annotations

import logging
import os
import shutil

import dask.dataframe as dd
import numpy as np

from nemo_aesthetic.datasets.doc_dataset import DocumentDataset
from nemo_aesthetic.dedup.clusters import (absolute, cluster_dirs, read_cluster, refuse_clearing_inputs,
                                          start_unique_id_check, write_clusters)
from nemo_aesthetic.dedup.kmeans import fit_kmeans
from nemo_aesthetic.engine.partitions import keep_dtypes

logger = logging.getLogger("nemo_aesthetic")

#: Beside embs_by_nearest_center: the rows that could not be clustered, each with its reason.
UNCLUSTERED_DIR = "unclustered"


class ClusteringModel:
    """Upstream's arguments and defaults. ``clustering_input_partition_size``, ``profile_dir`` and a
    log directory for ``logger`` are accepted (Dask sizes partitions; logs go to logger
    ``nemo_aesthetic``, or to the ``logging.Logger`` passed). Rows without a usable embedding
    (a failed download, NaN, a zero vector) are not clustered: they are written with their reason
    to ``<clustering_output_dir>/unclustered/`` and are never duplicates."""

    def __init__(self, id_column: str = "id", max_iter: int = 100, n_clusters: int = 1000,
                 clustering_output_dir: str = "./clustering_results", embedding_column: str = "embeddings",
                 random_state: int = 1234, clustering_input_partition_size: str | None = "2gb",
                 logger: logging.Logger | str = "./", profile_dir: str | None = None, keep_all_columns: bool = False):
        self.id_col = id_column
        self.max_iter = max_iter
        self.n_clusters = n_clusters
        self.clustering_output_dir = absolute(clustering_output_dir)
        self.embedding_column = embedding_column
        self.random_state = random_state
        self.clustering_input_partition_size = clustering_input_partition_size
        self.logger = logger if isinstance(logger, logging.Logger) else globals()["logger"]
        self.profile_dir = profile_dir
        self.keep_all_columns = keep_all_columns
        os.makedirs(self.clustering_output_dir, exist_ok=True)

    def __call__(self, embeddings_dataset: DocumentDataset) -> DocumentDataset:
        df = embeddings_dataset.df
        if self.embedding_column not in df.columns:
            raise ValueError(f'Expected embedding column "{self.embedding_column}" to be in dataset. '
                             f"Only found columns {list(df.columns)}")
        if self.id_col not in df.columns:
            raise ValueError(f'Expected id column "{self.id_col}" to be in dataset. Only found columns '
                             f"{list(df.columns)}")
        keep = [c for c in df.columns if c != self.embedding_column] if self.keep_all_columns else [self.id_col]
        if not self.keep_all_columns:
            df = df[[self.id_col, self.embedding_column]]
        output = os.path.join(self.clustering_output_dir, "embs_by_nearest_center")
        left_out = os.path.join(self.clustering_output_dir, UNCLUSTERED_DIR)
        refuse_clearing_inputs(df, [output, left_out])
        ids_checked = start_unique_id_check(df, self.id_col)  # beside the fit, on the workers
        result = fit_kmeans(df, self.embedding_column, self.n_clusters, max_iter=self.max_iter,
                            random_state=self.random_state, keep_columns=keep)
        ids_checked()  # before anything is written
        np.save(os.path.join(self.clustering_output_dir, "kmeans_centroids.npy"), result.centroids)
        for stale in (output, left_out):
            if os.path.exists(stale):
                self.logger.warning("Output directory %s already exists and will be overwritten", stale)
                shutil.rmtree(stale)
        clustered, unclustered = write_clusters(df, self.embedding_column, result.centroids, output, keep,
                                                partition_column="nearest_cent", left_out_path=left_out,
                                                held=result.held)
        self.logger.info("ClusteringModel: %d rows in %d clusters under %s; %d without a usable embedding in %s",
                         clustered, self.n_clusters, output, unclustered, left_out)
        dirs = cluster_dirs(output, "nearest_cent")
        columns = [*keep, self.embedding_column, "l2_dist_to_cent", "cosine_dist_to_cent"]
        meta = read_cluster(dirs[0][1][:1], columns).iloc[:0] if dirs else None
        if meta is None:
            return DocumentDataset(df.head(0, compute=False) if hasattr(df, "head") else df)
        with keep_dtypes():  # (the embeddings stay arrays)
            clusters = dd.from_map(_read_one_cluster, dirs, columns=columns,
                                   meta=meta.assign(nearest_cent=np.int32(0)), enforce_metadata=False)
        return DocumentDataset(clusters)


def _read_one_cluster(entry, columns):
    cluster_id, files = entry
    frame = read_cluster(files, columns)
    frame["nearest_cent"] = np.int32(cluster_id)
    return frame


__all__ = ["ClusteringModel"]
