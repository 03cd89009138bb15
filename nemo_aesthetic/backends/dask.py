"""DaskExecutor: a pipeline on Dask distributed, one task per partition, batches streamed.

Without ``initial_tasks`` the first stage (``FilePartitioningStage``) runs here on the client
and makes the partitions. Each partition becomes ONE Dask task that streams it through every
later stage on the worker: each batch the reader yields goes down the remaining stages before
the next one is read, so a worker holds about one batch per stage, not a shard, and images never
pass through the scheduler. As batches go by, the memory they freed goes back to the system (at
most once a second: :class:`~nemo_aesthetic.distributed.FreedMemoryReleaser`), or the worker's
footprint would creep up with the number of batches. Models load once per worker process
(``load_object_on_worker``).
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Iterable, Iterator

from nemo_aesthetic import progress
from nemo_aesthetic.backends.base import BaseExecutor, WorkerMetadata
from nemo_aesthetic.distributed import FreedMemoryReleaser
from nemo_aesthetic.progress import ShardProgress
from nemo_aesthetic.tasks import EmptyTask

logger = logging.getLogger("nemo_aesthetic")

#: Seconds between two "pipeline progress" log lines.
PROGRESS_LOG_INTERVAL = 10.0
#: Seconds the executor waits, once the results are in, for the last progress events.
FINAL_EVENTS_WAIT = 2.0


class DaskExecutor(BaseExecutor):
    """Run on ``client`` (a ``distributed.Client``), else the current Dask client, else a
    ``LocalCluster`` started for the run (CUDA workers where there is a GPU) and closed after."""

    upstream_name: str | None = None

    def __init__(self, config: dict | None = None, client=None, **options):
        super().__init__(config, **{k: v for k, v in options.items() if k == "ignore_head_node"})
        self.client = client
        if self.upstream_name:
            logger.warning("%s runs this pipeline on Dask (nemo_aesthetic's engine; no Ray or Xenna needed)",
                        self.upstream_name)

    def execute(self, stages: list, initial_tasks: list | None = None) -> list:
        stages = list(stages)
        if initial_tasks is None:
            source, stages = stages[0], stages[1:]
            initial_tasks = source.process_batch([EmptyTask])
            for i, task in enumerate(initial_tasks):
                task._set_task_id("", i)
        logger.info("pipeline: %d partition(s) through %s", len(initial_tasks),
                    " -> ".join(s.name for s in stages) or "(no stages)")
        if not initial_tasks or not stages:
            return list(initial_tasks)
        client, owned = _resolve_client(self.client)
        try:
            if hasattr(stages[0], "run_on_dask"):  # a whole-dataset stage (k-means) drives Dask itself
                return stages[0].run_on_dask(client, initial_tasks) if len(stages) == 1 else \
                    self.execute(stages[1:], stages[0].run_on_dask(client, initial_tasks))
            return _run_on(client, stages, initial_tasks)
        finally:
            if owned:
                cluster = client.cluster
                client.close()
                cluster.close()


def run_partition(stages: list, task, label: str | None = None) -> list:
    """On the worker: set the stages up, stream one partition through them, tear them down.

    The stages find the partition's :class:`~nemo_aesthetic.progress.ShardProgress` (named
    ``label``) in ``worker_metadata.extra["progress"]``: the embedding stage reports each model
    batch to it, and it says the partition is finished here, when the last stage is done.
    """
    tracker = ShardProgress(label or task.task_id or "partition", None)
    metadata = WorkerMetadata(worker_id=_worker_id(), extra={"progress": tracker})
    for stage in stages:
        stage.setup_on_node(None, metadata)
        stage.setup(metadata)
    try:
        outputs = list(stream(stages, [task], after_each=FreedMemoryReleaser()))
    finally:
        for stage in stages:
            stage.teardown()
    tracker.finish()
    return outputs


def stream(stages: list, tasks: Iterable, after_each: Callable[[], None] | None = None) -> Iterator:
    """The stages chained as generators (:meth:`~nemo_aesthetic.stages.base.ProcessingStage.process_tasks`):
    each output goes down the rest before a stage continues, so a partition holds a few batches,
    not a shard; ``after_each()`` runs after each output of the last stage (:func:`run_partition`:
    hand the batch's freed memory back)."""
    for stage in stages:
        tasks = stage.process_tasks(tasks)
    for out in tasks:
        yield out
        if after_each is not None:
            after_each()


def _run_on(client, stages, tasks) -> list:
    from distributed import as_completed

    resources = gpu_resources(client, stages)
    start = time.perf_counter()
    futures = [client.submit(run_partition, stages, task, f"{task.dataset_name}/{i}",
                             key=f"pipeline-partition-{task.task_id}-{id(task)}", pure=False, resources=resources)
               for i, task in enumerate(tasks)]
    order = {f.key: i for i, f in enumerate(futures)}
    results: list = [None] * len(futures)
    try:
        with logged_progress(client, len(futures)):
            for done, future in enumerate(as_completed(futures), 1):
                results[order[future.key]] = future.result()  # raises the partition's error
                logger.info("pipeline: partition %d/%d done", done, len(futures))
    except BaseException:
        client.cancel(futures)
        raise
    flat = [t for out in results for t in out]
    logger.info("pipeline: %d output task(s) in %.1fs", len(flat), time.perf_counter() - start)
    return flat


@contextlib.contextmanager
def logged_progress(client, partitions: int, interval: float = PROGRESS_LOG_INTERVAL):
    """Log how many images the pipeline has dealt with, and how fast, at most every ``interval``
    seconds, from the progress events its workers publish (:mod:`nemo_aesthetic.progress`).

    A client has one handler per topic, and distributed keeps a handler after
    ``unsubscribe_topic``: if this client has ever had one for the topic, it is left alone (the
    user listens themselves) and nothing is logged."""
    handlers = getattr(client, "_event_handlers", {})  # distributed has no public way to ask
    if progress.TOPIC in handlers:
        logger.debug("pipeline: this client has its own handler for %s; no progress lines", progress.TOPIC)
        yield None
        return
    tally, last = progress.ProgressTally(None, partitions), [time.monotonic()]

    def hear(event) -> None:
        tally.add(event[1])
        if time.monotonic() - last[0] >= interval:
            last[0] = time.monotonic()
            logger.info("pipeline progress: %s", tally.line("partitions"))

    client.subscribe_topic(progress.TOPIC, hear)
    try:
        yield tally
        # Events travel apart from the results: give the last ones a moment, then sum up.
        if tally.all_finished.wait(timeout=FINAL_EVENTS_WAIT):
            logger.info("pipeline progress: %s", tally.line("partitions"))
    finally:
        client.unsubscribe_topic(progress.TOPIC)
        handlers.pop(progress.TOPIC, None)  # ours: a later run may subscribe again


def gpu_resources(client, stages) -> dict | None:
    """``{"GPU": x}`` (the largest share a stage asks for) when the workers advertise a GPU
    resource; None (ignored) otherwise. A stage's ``num_gpus_per_worker`` counts even where the
    client has no GPU: the workers may."""
    need = max((float(getattr(s, "num_gpus_per_worker", 0) or s.resources.gpus or 0) for s in stages), default=0.0)
    workers = client.scheduler_info().get("workers", {}) if need > 0 else {}
    return {"GPU": need} if any("GPU" in (w.get("resources") or {}) for w in workers.values()) else None


def _resolve_client(client):
    """(client, whether we started it)."""
    from distributed import Client

    if client is not None:
        if not isinstance(client, Client):
            raise TypeError(f"executor must be a distributed.Client or an executor, got {type(client).__name__}")
        return client, False
    current = _current_client()
    if current is not None:
        return current, False
    import torch

    from nemo_aesthetic.distributed import get_client

    logger.info("no Dask client found: starting a LocalCluster for this run")
    return get_client(cluster_type="gpu" if torch.cuda.is_available() else "cpu", dashboard_address=":0"), True


def _current_client():
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:
        return None
    return client if client.status == "running" else None


def _worker_id() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except ValueError:
        return "local"
