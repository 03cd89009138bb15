"""The Dask client a command runs on: a local cluster it starts and stops, a running scheduler,
or none (``--cluster sync``)."""
from __future__ import annotations

import contextlib
import logging
import os
import signal

from distributed.diagnostics.plugin import WorkerPlugin

from nemo_aesthetic.cli.options import UsageError

logger = logging.getLogger("nemo_aesthetic.cli")


class _WorkerLogLevel(WorkerPlugin):
    """Sets the ``nemo_aesthetic`` logger's level on every worker (present and future)."""

    name = "nemo-aesthetic-log-level"

    def __init__(self, level: int):
        self.level = level

    def setup(self, worker):
        logging.getLogger("nemo_aesthetic").setLevel(self.level)


class _LeaveInterruptToTheCommand(WorkerPlugin):
    """Workers of a cluster the command started ignore SIGINT.

    Ctrl-C in a terminal reaches the whole process group, the local cluster's worker processes
    included; each then died on its own KeyboardInterrupt with a multiprocessing traceback,
    racing the command's orderly shutdown. The command alone handles the interrupt and closes
    its cluster, which stops the workers."""

    name = "nemo-aesthetic-leave-interrupt-to-command"

    def setup(self, worker):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker's event loop runs in its main thread


@contextlib.contextmanager
def dask_client(cluster: str, scheduler_file: str | None, workers: int | None, n_shards: int, quiet: bool):
    """A Dask client for the run (None for ``sync``), closed afterwards with any cluster it started."""
    import dask

    if scheduler_file and cluster != "cpu":
        raise UsageError("give --cluster or --scheduler-file, not both")
    if cluster == "sync" and not scheduler_file:
        with dask.config.set(scheduler="synchronous"):
            yield None
        return
    from nemo_aesthetic import get_client

    if scheduler_file:
        client = get_client(scheduler_file=scheduler_file)
    elif cluster == "cpu":
        n_workers = workers or max(1, min(os.cpu_count() or 1, n_shards))
        logger.info("starting a local Dask cluster with %d worker process(es)", n_workers)
        client = get_client("cpu", n_workers=n_workers, threads_per_worker=1, dashboard_address=":0")
    elif cluster == "gpu":
        client = get_client("gpu", threads_per_worker=2)  # two shards per GPU: one decodes while one runs
    else:
        client = get_client(scheduler_address=cluster)
    started = client.cluster if (scheduler_file is None and cluster in ("cpu", "gpu")) else None
    try:
        level = logging.WARNING if quiet else logging.INFO
        client.register_plugin(_WorkerLogLevel(level))
        client.forward_logging("nemo_aesthetic", level=level)
        if started is not None:
            client.register_plugin(_LeaveInterruptToTheCommand())
        with _silenced_on_interrupt():
            yield client
    except KeyboardInterrupt:
        quiet_teardown()
        raise
    finally:
        # Workers that take a few seconds to exit get killed by their nanny with a WARNING: the
        # results are already written by then, so that message is only noise here.
        nanny = logging.getLogger("distributed.nanny")
        nanny.setLevel(logging.ERROR)
        if started is not None:
            _quiet_worker_teardown(client)
        client.close()
        if started is not None:
            started.close()


@contextlib.contextmanager
def _silenced_on_interrupt():
    """Silence the teardown noise the moment Ctrl-C arrives, before the interrupt unwinds
    through distributed's ``sync``: cancelling the gather there already makes asyncio log
    "Task exception was never retrieved" for each shard, ahead of any ``except`` of ours."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        quiet_teardown()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _quiet_worker_teardown(client) -> None:
    """Before closing a cluster the command started, silence its workers' own teardown noise.

    Closing races the workers' heartbeats and running tasks: a worker logs "Failed to communicate
    with scheduler during heartbeat" with a traceback, or "Async instruction ... ended with
    CancelledError" for a task cancelled by Ctrl-C. The results are written (or the run was
    interrupted on purpose) by then, so those lines only bury the command's own last line. Only
    for a cluster we started: a user's scheduler keeps its logging."""
    try:
        client.run(quiet_teardown, on_error="ignore")
    except Exception as exc:  # the workers may already be gone; closing goes on regardless
        logger.debug("could not quiet the workers' teardown: %s", exc)


def quiet_teardown() -> None:
    """After Ctrl-C (which reaches the local cluster's processes too), silence what asyncio and
    distributed log while the interrupted run is torn down: tasks cancelled mid-gather ("Task
    exception was never retrieved"), comms closed under the workers. The data written so far is
    whole; those tracebacks only hid the one line that says the run was interrupted."""
    for name in ("asyncio", "distributed", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
