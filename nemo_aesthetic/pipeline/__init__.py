"""Pipeline: the stage-style front (NeMo Curator 1.x names) on Dask distributed.

The first stage is a source (:class:`~nemo_aesthetic.stages.file_partitioning.FilePartitioningStage`)
and runs on the client: it lists the files and groups them into partitions. Each partition then
becomes ONE Dask task that runs all later stages in sequence on the worker, so images never
travel through the scheduler and models (loaded through ``load_object_on_worker``) are loaded
once per worker process. Only the surviving images come back.
"""
from __future__ import annotations

import logging
import time
from typing import Sequence

from nemo_aesthetic.stages.base import ProcessingStage
from nemo_aesthetic.stages.tasks import EmptyTask, ImageBatch, Task

logger = logging.getLogger("nemo_aesthetic")

__all__ = ["Pipeline"]


class Pipeline:
    """An ordered list of stages.

    Args:
        name: shown in logs and used in Dask task keys.
        description: free text.
        stages: initial stages (more with :meth:`add_stage`).
    """

    def __init__(self, name: str, description: str | None = None,
                 stages: Sequence[ProcessingStage] | None = None):
        self.name = name
        self.description = description
        self.stages: list[ProcessingStage] = list(stages or [])

    def add_stage(self, stage: ProcessingStage) -> "Pipeline":
        if not isinstance(stage, ProcessingStage):
            raise TypeError(f"add_stage expects a stage, got {type(stage).__name__}")
        self.stages.append(stage)
        return self

    def describe(self) -> str:
        lines = [f"Pipeline {self.name!r}" + (f": {self.description}" if self.description else "")]
        lines += [f"  {i}. {type(s).__name__}" for i, s in enumerate(self.stages)]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Pipeline(name={self.name!r}, stages={[type(s).__name__ for s in self.stages]})"

    def run(self, executor=None) -> list[ImageBatch]:
        """Run on ``executor`` (a ``distributed.Client``), else the current Dask client, else a
        ``LocalCluster`` started here (and closed again at the end).

        Returns the output tasks of the last stage (``ImageBatch`` es holding the surviving
        images), in partition order.
        """
        if not self.stages:
            raise ValueError(f"pipeline {self.name!r} has no stages")
        source, stages = self.stages[0], self.stages[1:]
        if not source.is_source:
            raise ValueError(f"the first stage of pipeline {self.name!r} must create the tasks "
                             f"(e.g. FilePartitioningStage), not {type(source).__name__}")
        if any(s.is_source for s in stages):
            raise ValueError("only the first stage may be a source stage")
        _follow_backbones(stages)
        tasks = source.process(EmptyTask(task_id="source", dataset_name=self.name))
        logger.info("pipeline %s: %d partition(s) through %s", self.name, len(tasks),
                    " -> ".join(type(s).__name__ for s in stages) or "(no stages)")
        if not tasks:
            return []
        client, owned = _resolve_client(executor)
        try:
            return self._run_on(client, stages, tasks)
        finally:
            if owned:
                cluster = client.cluster
                client.close()
                if cluster is not None:
                    cluster.close()

    def _run_on(self, client, stages, tasks) -> list[Task]:
        from distributed import as_completed

        resources = _gpu_resources(client, stages)
        start = time.perf_counter()
        futures = [client.submit(_run_partition, stages, task, key=f"{self.name}-partition-{task.task_id}",
                                 pure=False, resources=resources)
                   for task in tasks]
        order = {f.key: i for i, f in enumerate(futures)}
        results: list = [None] * len(futures)
        try:
            for done, future in enumerate(as_completed(futures), 1):
                out = future.result()  # raises the partition's error
                results[order[future.key]] = out
                logger.info("pipeline %s: partition %d/%d done (%d images)", self.name, done, len(futures),
                            sum(t.num_items for t in out))
        except BaseException:
            client.cancel(futures)
            raise
        flat = [t for out in results for t in out]
        logger.info("pipeline %s: %d images survived in %.1fs", self.name, sum(t.num_items for t in flat),
                    time.perf_counter() - start)
        return flat


def _follow_backbones(stages: Sequence[ProcessingStage]) -> None:
    """Score stages after an embedding stage take its backbone's head (LAION-Aesthetics V1) and
    check its embedding width here, before any work, rather than on the first batch."""
    embedder = None
    for stage in stages:
        if getattr(stage, "embedder", None) is not None:
            embedder = stage.embedder
        elif embedder is not None and getattr(stage, "classifier", None) is not None:
            if hasattr(stage, "follow_backbone"):
                stage.follow_backbone(embedder.model_name)
            stage.classifier.check_embedding_dim(embedder.embedding_dim, source=f"the ImageEmbeddingStage "
                                                 f"({embedder.model_name})")


def _run_partition(stages: Sequence[ProcessingStage], task: Task) -> list[Task]:
    """On the worker: one partition through every stage, in order."""
    tasks: list[Task] = [task]
    for stage in stages:
        tasks = stage.process_batch(tasks)
    return tasks


def _resolve_client(executor):
    """(client, whether we started it)."""
    if executor is not None:
        from distributed import Client

        if not isinstance(executor, Client):
            raise TypeError(f"executor must be a distributed.Client, got {type(executor).__name__}")
        return executor, False
    client = _current_client()
    if client is not None:
        return client, False
    from nemo_aesthetic.distributed import get_client

    logger.info("no Dask client found: starting a LocalCluster for this run")
    return get_client(cluster_type="gpu" if _has_cuda() else "cpu", dashboard_address=":0"), True


def _current_client():
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:
        return None
    return client if client.status == "running" else None


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _gpu_resources(client, stages) -> dict | None:
    """``{"GPU": x}`` when the workers advertise a GPU resource; None (ignored) otherwise."""
    need = max((float(getattr(s, "num_gpus_per_worker", 0) or 0) for s in stages), default=0.0)
    if need <= 0:
        return None
    workers = client.scheduler_info().get("workers", {})
    if not any("GPU" in (w.get("resources") or {}) for w in workers.values()):
        return None
    return {"GPU": need}
