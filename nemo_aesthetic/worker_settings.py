"""The driver's settings on every Dask worker, including restarted ones and ``dask worker`` processes.

A worker is a process of its own, often on another machine, started by ``dask worker`` before the
driver ran: it does not see the driver's ``dask.config`` (the pandas/cuDF backend), nor the
environment variables our code reads (``NEMO_AESTHETIC_HOME``, ``NEMO_AESTHETIC_OFFLINE``, the
tar member-size cap, ...), and ``client.run`` reaches only the workers alive at the time: one a
nanny restarts after running out of memory would come back without them. :class:`WorkerSettings` is
a Dask ``WorkerPlugin``: registered once with the scheduler, it runs on every worker that joins, now
or later, and sets there

- ``dataframe.backend``, as on the driver when it was registered;
- the driver's ``NEMO_AESTHETIC_*`` and ``HF_HUB_OFFLINE`` environment variables;
- torch's CPU threads: Dask starts workers with ``OMP_NUM_THREADS=1``, so a CPU worker's forward
  pass used one core whatever the machine; by default each worker gets its share of its host's
  cores (the cores divided by the workers on that host), or ``torch_threads`` when given;
- PyTorch allocating from RMM's pool (``set_torch_to_use_rmm``), on GPU workers.

:func:`~nemo_aesthetic.distributed.get_client` registers it; for a ``Client`` made another way call
:func:`register_worker_settings` once.
"""
from __future__ import annotations

import logging
import os

import dask
from distributed import WorkerPlugin

logger = logging.getLogger(__name__)

#: Environment variables the driver hands to the workers (a prefix, or a full name).
ENV_PREFIX = "NEMO_AESTHETIC_"
ENV_NAMES = ("HF_HUB_OFFLINE",)


class WorkerSettings(WorkerPlugin):
    """Settings captured on the driver, applied on each worker as it starts (see the module doc)."""

    name = "nemo-aesthetic-settings"

    def __init__(self, backend: str | None = None, env: dict | None = None, torch_threads: int | None = None,
                 torch_uses_rmm: bool = False):
        self.backend = backend if backend is not None else dask.config.get("dataframe.backend", "pandas")
        self.env = dict(env) if env is not None else {
            k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX) or k in ENV_NAMES}
        self.torch_threads = torch_threads
        self.torch_uses_rmm = torch_uses_rmm

    async def setup(self, worker):
        dask.config.set({"dataframe.backend": self.backend})
        os.environ.update(self.env)
        threads = self.torch_threads or await _host_share_of_cores(worker)
        _set_torch_threads(threads)
        if self.torch_uses_rmm:
            from nemo_aesthetic.distributed import _set_torch_to_use_rmm

            _set_torch_to_use_rmm()
        logger.info("worker %s: dataframe backend %s, torch threads %d, %d environment setting(s)",
                    worker.address, self.backend, threads, len(self.env))


async def _host_share_of_cores(worker) -> int:
    """This worker's share of its host's cores: the cores it may use, divided by the workers there."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        info = await worker.scheduler.identity()
        host = worker.address.rsplit(":", 1)[0]
        here = sum(1 for address in info.get("workers", {}) if address.rsplit(":", 1)[0] == host)
    except Exception:  # an old scheduler, or one that is going away: assume the host is shared evenly
        here = 1
    return max(1, cores // max(1, here))


def _set_torch_threads(threads: int) -> None:
    """torch's intra-op threads (torch is imported here if the worker had not yet)."""
    try:
        import torch
    except ImportError:  # a worker without torch runs no model
        return
    torch.set_num_threads(threads)


def register_worker_settings(client, torch_threads: int | None = None, torch_uses_rmm: bool = False) -> None:
    """Register :class:`WorkerSettings` (from this process's settings) with ``client``'s cluster.

    Every worker gets them, those already running and any that start later; registering again
    replaces them (same plugin name).
    """
    client.register_plugin(WorkerSettings(torch_threads=torch_threads, torch_uses_rmm=torch_uses_rmm))
