"""DaskExecutor: a pipeline on Dask distributed, one task per partition, batches streamed.

Without ``initial_tasks`` the first stage (``FilePartitioningStage``) runs here on the client
and makes the partitions. Each partition becomes ONE Dask task that streams it through every
later stage on the worker: each batch the reader yields goes down the remaining stages before
the next one is read, so a worker holds about one batch per stage, not a shard, and images never
pass through the scheduler. As batches go by, the memory they freed goes back to the system (at
most once a second per worker thread, across its partitions:
:func:`~nemo_aesthetic.distributed.thread_memory_releaser`), or the worker's
footprint would creep up with the number of batches. Models load once per worker process
(``load_object_on_worker``).

Stages are set up once per worker thread for the run, not once per partition (a model stage's
``setup`` costs a quarter of a second even with its model cached; a user's stage may load its own):
each partition's task looks the run's set-up stages up on its worker by the run's id, as an
upstream actor keeps its stages. They are torn down when the run ends. One thread keeps its own
copies, so a stage that keeps state between calls (as upstream's actors let it) is never shared
by two partitions at once.

One failed partition does not stop the others. A partition that fails with a transient I/O error
(:func:`~nemo_aesthetic.retrying.is_transient`) runs again, up to ``retries`` times; when every
partition is done, the first partition's error that remains is raised, with a note naming every
failed partition and why (the outputs the others wrote stay written).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from typing import Callable, Iterable, Iterator

from nemo_aesthetic import progress
from nemo_aesthetic.backends.base import BaseExecutor, WorkerMetadata
from nemo_aesthetic.distributed import current_client as _current_client
from nemo_aesthetic.distributed import thread_memory_releaser
from nemo_aesthetic.progress import ShardProgress, set_current_shard_progress
from nemo_aesthetic.retrying import is_transient
from nemo_aesthetic.tasks import EmptyTask

logger = logging.getLogger("nemo_aesthetic")

#: Seconds between two "pipeline progress" log lines.
PROGRESS_LOG_INTERVAL = 10.0
#: Seconds the executor waits, once the results are in, for the last progress events.
FINAL_EVENTS_WAIT = 2.0
#: Times a partition that failed with a transient I/O error runs again.
PARTITION_RETRIES = 2

#: On a worker: ``(run id, thread id) -> the stages, set up``; see :func:`run_partition`.
_SET_UP: dict[tuple[str, int], list] = {}
_SET_UP_LOCK = threading.Lock()


class DaskExecutor(BaseExecutor):
    """Run on ``client`` (a ``distributed.Client``), else the current Dask client, else a
    ``LocalCluster`` started for the run (CUDA workers where there is a GPU) and closed after."""

    upstream_name: str | None = None

    def __init__(self, config: dict | None = None, client=None, retries: int = PARTITION_RETRIES, **options):
        super().__init__(config, **{k: v for k, v in options.items() if k == "ignore_head_node"})
        self.client = client
        self.retries = int((config or {}).get("retries", retries))
        #: ``(partition, error)`` of each partition that failed in the last run.
        self.failures: list[tuple[str, BaseException]] = []
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
            return _run_on(client, stages, initial_tasks, self.retries, self.failures)
        finally:
            if owned:
                cluster = client.cluster
                client.close()
                cluster.close()


def run_partition(stages: list, task, label: str | None = None, run_id: str | None = None) -> list:
    """On the worker: stream one partition through the stages, set up once per worker thread per run.

    ``run_id`` names the run: the first partition a worker thread gets sets its copy of the stages
    up and keeps them (:data:`_SET_UP`) for the run's later partitions; :func:`tear_down_run` ends
    them. Without a ``run_id`` the stages are set up and torn down around this partition alone.
    The stages find the partition's :class:`~nemo_aesthetic.progress.ShardProgress` (named ``label``)
    with :func:`~nemo_aesthetic.progress.current_shard_progress`: the embedding stage reports each
    model batch to it, and it says the partition is finished here, when the last stage is done.
    """
    tracker = ShardProgress(label or task.task_id or "partition", None)
    key = (run_id, threading.get_ident())
    with _SET_UP_LOCK:
        ready = _SET_UP.get(key) if run_id is not None else None
    if ready is None:
        metadata = WorkerMetadata(worker_id=_worker_id(), extra={"progress": tracker})
        for stage in stages:
            stage.setup_on_node(None, metadata)
            stage.setup(metadata)
        ready = stages
        if run_id is not None:
            with _SET_UP_LOCK:
                _SET_UP[key] = ready
    set_current_shard_progress(tracker)
    try:
        outputs = list(stream(ready, [task], after_each=thread_memory_releaser()))
    finally:
        set_current_shard_progress(None)
        if run_id is None:
            for stage in ready:
                stage.teardown()
    tracker.finish()
    return outputs


def tear_down_run(run_id: str) -> int:
    """On a worker: tear down the stages a run set up there; how many threads had them."""
    with _SET_UP_LOCK:
        runs = [_SET_UP.pop(k) for k in [k for k in _SET_UP if k[0] == run_id]]
    for stages in runs:
        for stage in stages:
            try:
                stage.teardown()
            except Exception:  # one stage's teardown must not keep the others' resources
                logger.exception("pipeline: teardown of %s failed", getattr(stage, "name", stage))
    return len(runs)


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


def _run_on(client, stages, tasks, retries: int = PARTITION_RETRIES, failures: list | None = None) -> list:
    from distributed import as_completed

    resources = gpu_resources(client, stages)
    run_id = f"pipeline-{uuid.uuid4().hex}"
    start = time.perf_counter()
    labels = [f"{task.dataset_name}/{i}" for i, task in enumerate(tasks)]

    def submit(i: int, attempt: int):
        return client.submit(run_partition, stages, tasks[i], labels[i], run_id,
                             key=f"pipeline-partition-{tasks[i].task_id}-{id(tasks[i])}-{attempt}", pure=False,
                             resources=resources)

    futures = [submit(i, 0) for i in range(len(tasks))]
    index = {f.key: (i, 0) for i, f in enumerate(futures)}
    live = {f.key: f for f in futures}
    results: list = [[] for _ in tasks]
    failed: list[tuple[str, BaseException]] = [] if failures is None else failures
    failed.clear()
    pending = as_completed(futures)
    try:
        with logged_progress(client, len(futures)):
            for done, future in enumerate(pending, 1):
                i, attempt = index.pop(future.key)
                live.pop(future.key, None)
                error = future.exception() if future.status == "error" else None
                if error is None:
                    results[i] = future.result()
                    logger.info("pipeline: partition %d/%d done", done, len(tasks))
                elif is_transient(error) and attempt < retries:
                    logger.warning("pipeline: partition %s failed (%s: %s); running it again (retry %d of %d)",
                                   labels[i], type(error).__name__, error, attempt + 1, retries)
                    again = submit(i, attempt + 1)
                    index[again.key] = (i, attempt + 1)
                    live[again.key] = again
                    pending.add(again)
                else:
                    failed.append((labels[i], error))
                    logger.error("pipeline: partition %s failed: %s: %s", labels[i], type(error).__name__, error)
    except BaseException:
        client.cancel(list(live.values()))
        raise
    finally:
        with contextlib.suppress(Exception):  # a worker that died took its stages with it
            client.run(tear_down_run, run_id)
    futures = live = pending = future = None  # an error raised below must not keep the results in the cluster
    flat = [t for out in results for t in out]
    logger.info("pipeline: %d output task(s) in %.1fs", len(flat), time.perf_counter() - start)
    if failed:
        error = failed[0][1]
        error.add_note(f"{len(failed)} of {len(tasks)} partition(s) failed; the others ran to the end: "
                       + "; ".join(f"{label}: {type(e).__name__}: {e}" for label, e in failed[:10])
                       + (" ..." if len(failed) > 10 else ""))
        raise error
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


def _worker_id() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except ValueError:
        return "local"
