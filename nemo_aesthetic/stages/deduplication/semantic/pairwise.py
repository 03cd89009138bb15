"""PairwiseStage (NeMo Curator 1.x's ``semantic.pairwise``): per cluster, each row's most similar
earlier-ranked row, written to ``output_path/cluster_<k>.parquet`` (``id``, ``max_id``,
``cosine_sim_score``). One Dask task per cluster, torch on the worker's device
(:mod:`nemo_aesthetic.dedup.pairwise`)."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

from nemo_aesthetic.dedup.clusters import write_cluster_matches
from nemo_aesthetic.dedup.pairwise import pairwise_max_similarity
from nemo_aesthetic.dedup.ranking import RankingStrategy
from nemo_aesthetic.stages.base import CompositeStage, ProcessingStage
from nemo_aesthetic.stages.deduplication.semantic.pairwise_io import ClusterWiseFilePartitioningStage
from nemo_aesthetic.stages.resources import Resources
from nemo_aesthetic.tasks import FileGroupTask
from nemo_aesthetic.stages.deduplication.semantic.utils import disallow_kwargs as _disallow

logger = logging.getLogger("nemo_aesthetic")


def pairwise_cosine_similarity_batched(cluster_reps, batch_size: int = 1024):
    """Upstream's name for :func:`~nemo_aesthetic.dedup.pairwise.pairwise_max_similarity`; runs
    on the tensor's device (upstream moves it to CUDA; here a CPU tensor stays on the CPU)."""
    return pairwise_max_similarity(cluster_reps, batch_size)


class PairwiseCosineSimilarityStage(ProcessingStage):
    """One cluster's files (a task from ClusterWiseFilePartitioningStage) -> its matches file."""

    def __init__(self, id_field: str, embedding_field: str, output_path: str, ranking_strategy: RankingStrategy,
                 pairwise_batch_size: int = 1024, verbose: bool = False, embedding_dim: int | None = None,
                 read_kwargs: dict[str, Any] | None = None, write_kwargs: dict[str, Any] | None = None):
        self.id_field, self.embedding_field, self.output_path = id_field, embedding_field, output_path
        self.pairwise_batch_size, self.embedding_dim = pairwise_batch_size, embedding_dim
        self.ranking_strategy, self.verbose = ranking_strategy, verbose
        self.read_kwargs = dict(read_kwargs or {})
        self.write_kwargs = dict(write_kwargs or {})
        _disallow(self.read_kwargs, ["columns", "assign_id"])
        _disallow(self.write_kwargs, ["index"])
        self.input_storage_options = self.read_kwargs.pop("storage_options", None)
        self.output_storage_options = self.write_kwargs.pop("storage_options", None)
        self.name = "PairwiseCosineSimilarityStage"
        self.resources = Resources(cpus=1.0)

    def process(self, task: FileGroupTask) -> FileGroupTask:
        if task._metadata.get("filetype") != "parquet":
            raise ValueError("PairwiseCosineSimilarityStage only supports parquet files, got "
                             f"{task._metadata.get('filetype')}")
        cluster_id = task._metadata.get("centroid_id")
        if cluster_id is None:
            raise ValueError("centroid_id not found in task metadata")
        output_file = os.path.join(self.output_path, f"cluster_{cluster_id}.parquet")
        if not task.data:
            logger.warning("No data found for cluster %s", cluster_id)
            return FileGroupTask(dataset_name=task.dataset_name, _metadata=task._metadata,
                                 _stage_perf=task._stage_perf, data=[])
        start = time.perf_counter()
        rows = write_cluster_matches(task.data, output_file, self.id_field, self.embedding_field,
                                     self.ranking_strategy, self.pairwise_batch_size, self.input_storage_options,
                                     self.output_storage_options, self.read_kwargs, self.write_kwargs)
        if self.verbose:
            logger.debug("Pairwise computation for cluster %s with %d rows done in %.2f seconds", cluster_id, rows,
                         time.perf_counter() - start)
        return FileGroupTask(dataset_name=task.dataset_name, _metadata={**task._metadata, "centroid_id": cluster_id},
                             _stage_perf=task._stage_perf, data=[output_file])


@dataclass
class PairwiseStage(CompositeStage):
    """ClusterWiseFilePartitioningStage + PairwiseCosineSimilarityStage. Without a
    ``ranking_strategy``, ``which_to_keep`` ("hard": farthest from the centroid first, "easy":
    closest, "random") by ``sim_metric`` distance, ties broken by id."""

    id_field: str
    embedding_field: str
    input_path: str
    output_path: str
    ranking_strategy: RankingStrategy | None = None
    embedding_dim: int | None = None
    pairwise_batch_size: int = 1024
    verbose: bool = False
    read_kwargs: dict[str, Any] | None = None
    write_kwargs: dict[str, Any] | None = None
    which_to_keep: Literal["hard", "easy", "random"] = "hard"
    sim_metric: Literal["cosine", "l2"] = "cosine"
    random_seed: int = 42

    def __post_init__(self):
        self.name = "PairwiseStage"
        if self.ranking_strategy is None:
            self.ranking_strategy = RankingStrategy.by_distance(self.which_to_keep, self.sim_metric, self.id_field,
                                                                self.random_seed)

    def decompose(self) -> list[ProcessingStage]:
        return [
            ClusterWiseFilePartitioningStage(input_path=self.input_path,
                                             storage_options=(self.read_kwargs or {}).get("storage_options")),
            PairwiseCosineSimilarityStage(
                id_field=self.id_field, embedding_field=self.embedding_field, output_path=self.output_path,
                pairwise_batch_size=self.pairwise_batch_size, verbose=self.verbose,
                ranking_strategy=self.ranking_strategy, embedding_dim=self.embedding_dim,
                read_kwargs=self.read_kwargs, write_kwargs=self.write_kwargs),
        ]
