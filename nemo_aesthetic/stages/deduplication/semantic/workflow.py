"""SemanticDeduplicationWorkflow (NeMo Curator 1.x's ``semantic.workflow``): k-means, then per
cluster pairwise similarity, then (with ``eps``) the ids to remove, all on one Dask cluster.

Layout, as upstream: ``<cache_path>/kmeans_results/centroid=<k>/``,
``<cache_path>/pairwise_results/cluster_<k>.parquet`` and ``<output_path>/duplicates/*.parquet``
(column ``id``). Beyond upstream: rows without a usable embedding are not clustered and are
listed with a reason in ``<cache_path>/unclustered/``; an output path that overlaps the input is
refused before anything is cleared.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Literal

import fsspec
import numpy as np

from nemo_aesthetic.backends.base import BaseExecutor
from nemo_aesthetic.dedup.clusters import absolute
from nemo_aesthetic.pipeline import Pipeline
from nemo_aesthetic.pipeline.workflow import WorkflowBase, WorkflowRunResult
from nemo_aesthetic.stages.deduplication.semantic.identify_duplicates import IdentifyDuplicatesStage
from nemo_aesthetic.stages.deduplication.semantic.kmeans import KMeansStage
from nemo_aesthetic.stages.deduplication.semantic.pairwise import PairwiseStage
from nemo_aesthetic.stages.deduplication.semantic.ranking import RankingStrategy
from nemo_aesthetic.tasks import FileGroupTask

logger = logging.getLogger("nemo_aesthetic")

MIN_RECOMMENDED_N_CLUSTERS = 1000


class SemanticDeduplicationWorkflow(WorkflowBase):
    """Upstream's signature and defaults (v1.3.0); see the module docstring for the layout."""

    def __init__(self, input_path: str | list[str], output_path: str, n_clusters: int, cache_path: str | None = None,
                 id_field: str = "id", embedding_field: str = "embeddings", embedding_dim: int | None = None,
                 metadata_fields: list[str] | None = None, input_filetype: Literal["parquet", "jsonl"] = "parquet",
                 input_file_extensions: list[str] | None = None, max_iter: int = 300, tol: float = 1e-4,
                 random_state: int = 42, init: Literal["k-means||", "random"] | np.ndarray = "k-means||",
                 n_init: int | Literal["auto"] = 1, oversampling_factor: float = 2.0,
                 max_samples_per_batch: int = 1 << 15, fit_data_fraction: float | None = None,
                 distance_metric: Literal["cosine", "l2"] = "cosine",
                 which_to_keep: Literal["hard", "easy", "random"] = "hard",
                 ranking_strategy: RankingStrategy | None = None, pairwise_batch_size: int = 1024,
                 eps: float | None = None, _duplicates_num_row_groups_hint: int | None = None,
                 read_kwargs: dict[str, Any] | None = None, cache_kwargs: dict[str, Any] | None = None,
                 write_kwargs: dict[str, Any] | None = None, clear_output: bool = True, verbose: bool = True):
        # local paths made absolute here: the workers may run in another directory
        self.input_path = absolute(input_path) if isinstance(input_path, str) else [absolute(p) for p in input_path]
        self.output_path = absolute(output_path)
        self.cache_path = absolute(cache_path) if cache_path else self.output_path
        self.kmeans_output_path = os.path.join(self.cache_path, "kmeans_results")
        self.pairwise_output_path = os.path.join(self.cache_path, "pairwise_results")
        self.duplicates_output_path = os.path.join(self.output_path, "duplicates")
        self.n_clusters = n_clusters
        self.id_field, self.embedding_field, self.embedding_dim = id_field, embedding_field, embedding_dim
        self.metadata_fields = metadata_fields
        self.input_filetype, self.input_file_extensions = input_filetype, input_file_extensions
        self.max_iter, self.tol, self.random_state, self.init = max_iter, tol, random_state, init
        self.n_init, self.oversampling_factor = n_init, oversampling_factor
        self.max_samples_per_batch, self.fit_data_fraction = max_samples_per_batch, fit_data_fraction
        self.distance_metric, self.which_to_keep = distance_metric, which_to_keep
        self.ranking_strategy, self.pairwise_batch_size = ranking_strategy, pairwise_batch_size
        self.eps, self._duplicates_num_row_groups_hint = eps, _duplicates_num_row_groups_hint
        self.read_kwargs = dict(read_kwargs or {})
        self.write_kwargs = dict(write_kwargs or {})
        self.cache_kwargs = dict(cache_kwargs) if cache_kwargs else dict(self.write_kwargs)
        self.clear_output, self.verbose = clear_output, verbose
        self._validate_config()

    def _validate_config(self) -> None:
        if self.n_clusters < MIN_RECOMMENDED_N_CLUSTERS:
            logger.warning("n_clusters=%d is less than %d. For large datasets each cluster must fit in one "
                           "worker's memory; consider n_clusters >= %d.", self.n_clusters,
                           MIN_RECOMMENDED_N_CLUSTERS, MIN_RECOMMENDED_N_CLUSTERS)
        if self.fit_data_fraction is not None and not 0.0 < self.fit_data_fraction < 1.0:
            raise ValueError(f"fit_data_fraction must be in (0, 1), got {self.fit_data_fraction}; "
                             "pass None to fit on the full dataset")
        if self.ranking_strategy is None:
            if self.distance_metric not in {"cosine", "l2"}:
                raise ValueError(f"Invalid distance_metric: {self.distance_metric}. Must be 'cosine' or 'l2'")
            if self.which_to_keep not in {"hard", "easy", "random"}:
                raise ValueError(f"Invalid which_to_keep: {self.which_to_keep}. Must be 'hard', 'easy', or 'random'")
        else:
            missing = set(self.ranking_strategy.metadata_cols) - set(self.metadata_fields or []) - {self.id_field}
            if missing:
                raise ValueError(f"Metadata fields {missing} are required for ranking")
        if self.eps is not None and not 0.0 <= self.eps < 2.0:
            raise ValueError(f"eps must be in [0, 2) (cosine similarity >= 1 - eps), got {self.eps}")
        self._refuse_overlap()

    def _refuse_overlap(self) -> None:
        """Clearing the output must never touch the input: refuse nested or equal paths."""
        inputs = [self.input_path] if isinstance(self.input_path, str) else list(self.input_path)
        outputs = {self.output_path, self.cache_path}
        for src in inputs:
            for dst in outputs:
                a, b = _normalized(src), _normalized(dst)
                if a == b or a.startswith(b + "/") or b.startswith(a + "/"):
                    raise ValueError(f"output path {dst!r} overlaps the input path {src!r}: the workflow clears "
                                     "its output directories, which would delete input files; choose a separate "
                                     "directory")

    def _setup_directories(self) -> None:
        storage_options = self.write_kwargs.get("storage_options")
        dirs = [self.output_path, self.kmeans_output_path, self.pairwise_output_path,
                os.path.join(self.cache_path, "unclustered")]
        dirs += [self.duplicates_output_path] if self.eps is not None else []
        for path in dirs:
            fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
            if self.clear_output and fs.exists(root) and path != self.output_path:
                fs.rm(root, recursive=True)
            fs.makedirs(root, exist_ok=True)
        if self.clear_output:  # the output root too, but only what this workflow writes there
            fs, root = fsspec.core.url_to_fs(self.duplicates_output_path, **(storage_options or {}))
            if self.eps is None and fs.exists(root):
                fs.rm(root, recursive=True)

    def _kmeans_stage(self) -> KMeansStage:
        return KMeansStage(
            n_clusters=self.n_clusters, id_field=self.id_field, embedding_field=self.embedding_field,
            input_path=self.input_path, output_path=self.kmeans_output_path, metadata_fields=self.metadata_fields,
            embedding_dim=self.embedding_dim, input_filetype=self.input_filetype,
            input_file_extensions=self.input_file_extensions, verbose=self.verbose, max_iter=self.max_iter,
            tol=self.tol, random_state=self.random_state, init=self.init, n_init=self.n_init,
            oversampling_factor=self.oversampling_factor, max_samples_per_batch=self.max_samples_per_batch,
            fit_data_fraction=self.fit_data_fraction, cache_path=None, read_kwargs=self.read_kwargs,
            write_kwargs=self.cache_kwargs)

    def _run_kmeans_stage(self, kmeans_executor: BaseExecutor) -> list:
        pipeline = Pipeline(name="semantic_dedup_kmeans", description="K-means clustering stage of semantic "
                            "deduplication", stages=[self._kmeans_stage()])
        return pipeline.run(kmeans_executor)

    def _run_pairwise_stage(self, pairwise_executor: BaseExecutor) -> list:
        pairwise = PairwiseStage(
            id_field=self.id_field, embedding_field=self.embedding_field, input_path=self.kmeans_output_path,
            output_path=self.pairwise_output_path, ranking_strategy=self.ranking_strategy,
            embedding_dim=self.embedding_dim, pairwise_batch_size=self.pairwise_batch_size, verbose=self.verbose,
            which_to_keep=self.which_to_keep, sim_metric=self.distance_metric, random_seed=self.random_state,
            read_kwargs=self.cache_kwargs, write_kwargs=self.cache_kwargs)
        results = Pipeline(name="semantic_dedup_pairwise", stages=[pairwise]).run(pairwise_executor)
        if self.eps is None:
            return results
        identify = IdentifyDuplicatesStage(
            output_path=self.duplicates_output_path, eps=self.eps,
            _num_row_groups_hint=self._duplicates_num_row_groups_hint, verbose=self.verbose,
            read_kwargs=self.cache_kwargs, write_kwargs=self.write_kwargs)
        step = identify.batch_size  # several clusters per duplicates file, as upstream
        batches = [FileGroupTask(dataset_name=results[i].dataset_name, data=[f for t in results[i:i + step]
                                                                             for f in t.data])
                   for i in range(0, len(results), step)]
        for i, task in enumerate(batches):
            task._set_task_id("identify", i)
        return Pipeline(name="semantic_dedup_identify", stages=[identify]).run(pairwise_executor,
                                                                                initial_tasks=batches)

    def run(self, kmeans_executor: BaseExecutor | None = None,
            pairwise_executor: BaseExecutor | None = None) -> WorkflowRunResult:
        """Both phases on Dask: upstream's executors (``RayActorPoolExecutor``, ``XennaExecutor``,
        ``RayDataExecutor``) are accepted and run on Dask; a ``distributed.Client`` may be
        passed as an executor. Without one, the current client, else one LocalCluster for the run."""
        from nemo_aesthetic.backends.dask import DaskExecutor, _resolve_client

        total_start = time.time()
        result = WorkflowRunResult(workflow_name="semantic_deduplication")
        given = [e for e in (kmeans_executor, pairwise_executor) if e is not None]
        client = next((getattr(e, "client", None) or (e if not isinstance(e, BaseExecutor) else None)
                       for e in given if getattr(e, "client", None) is not None or not isinstance(e, BaseExecutor)),
                      None)
        client, owned = _resolve_client(client)
        kmeans_executor = _on(kmeans_executor, client)
        pairwise_executor = _on(pairwise_executor, client)
        try:
            self._setup_directories()
            logger.info("semantic dedup: %s -> %s, %d clusters, eps=%s, which_to_keep=%s, metric=%s",
                        self.input_path, self.output_path, self.n_clusters, self.eps, self.which_to_keep,
                        self.distance_metric)
            start = time.time()
            kmeans_results = self._run_kmeans_stage(kmeans_executor)
            result.add_pipeline_tasks("kmeans", kmeans_results)
            result.add_metadata("kmeans_time", time.time() - start)
            start = time.time()
            pairwise_results = self._run_pairwise_stage(pairwise_executor)
            result.add_pipeline_tasks("pairwise", pairwise_results)
            result.add_metadata("pairwise_time", time.time() - start)
            removed = sum(t._metadata.get("num_removed", 0) for t in pairwise_results) if self.eps is not None else 0
            unclustered = sum(t._metadata.get("unclustered", 0) for t in kmeans_results)
            result.extend_metadata({"total_time": time.time() - total_start, "num_duplicates": removed,
                                    "num_unclustered": unclustered})
            logger.info("semantic dedup done in %.2fs (k-means %.2fs, pairwise %.2fs): %d duplicate(s) at "
                        "similarity >= %s; %d row(s) without a usable embedding kept", result.metadata["total_time"],
                        result.metadata["kmeans_time"], result.metadata["pairwise_time"], removed,
                        None if self.eps is None else round(1.0 - self.eps, 6), unclustered)
        finally:
            if owned:
                cluster = client.cluster
                client.close()
                cluster.close()
        return result


def _on(executor, client):
    """An executor that runs on ``client``."""
    from nemo_aesthetic.backends.dask import DaskExecutor

    if executor is None or not isinstance(executor, BaseExecutor):
        return DaskExecutor(client=client)
    if isinstance(executor, DaskExecutor) and executor.client is None:
        executor.client = client
    return executor


def _normalized(path: str) -> str:
    path = str(path)
    if "://" not in path or path.startswith("file://"):
        return os.path.realpath(path.removeprefix("file://")).rstrip("/")
    return path.rstrip("/")
