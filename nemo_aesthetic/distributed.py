"""Dask clusters and per-worker state.

``get_client`` starts a local cluster (CPU: ``LocalCluster``; GPU: dask-cuda's
``LocalCUDACluster``, one worker per GPU) or connects to one started elsewhere with the standard
``dask scheduler`` / ``dask worker`` commands. ``load_object_on_worker`` keeps expensive objects
(models) alive once per worker process, so a model is loaded once, not once per partition; each
load is logged and, on a Dask worker, recorded as a scheduler event (topic :data:`LOAD_EVENTS`,
``{"key", "seconds", "worker"}``), so ``client.get_events(LOAD_EVENTS)`` or the dashboard shows
which worker loaded which model and how long it took.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

import dask
from distributed import Client, LocalCluster

_CACHE: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()
_KEY_LOCKS: dict[str, threading.Lock] = {}
#: The Dask event topic of model loads (see :func:`load_object_on_worker`).
LOAD_EVENTS = "nemo_aesthetic.load"
logger = logging.getLogger(__name__)


def get_client(cluster_type: str = "cpu", scheduler_address: str | None = None,
               scheduler_file: str | None = None, n_workers: int | None = os.cpu_count(),
               threads_per_worker: int = 1, timeout: str | int = "30s", **cluster_kwargs) -> Client:
    """A ``distributed.Client``: to an existing cluster, or to a new local one.

    Args:
        cluster_type: "cpu" (``LocalCluster`` with worker processes) or "gpu" (dask-cuda's
            ``LocalCUDACluster``, one worker per visible GPU; needs the ``gpu`` extra).
        scheduler_address: connect to a running scheduler (``tcp://host:8786``) instead.
        scheduler_file: connect using the JSON file ``dask scheduler --scheduler-file`` wrote.
        n_workers, threads_per_worker: size of a local CPU cluster.
        timeout: how long to wait for an existing scheduler before giving up.
        cluster_kwargs: passed to the local cluster (e.g. ``memory_limit``; for GPU clusters
            ``rmm_pool_size``, ``enable_cudf_spill``, ``protocol``, ``CUDA_VISIBLE_DEVICES``).
    """
    if scheduler_address and scheduler_file:
        raise ValueError("give scheduler_address or scheduler_file, not both")
    if scheduler_address or scheduler_file:
        if scheduler_file and not os.path.exists(scheduler_file):
            raise FileNotFoundError(f"scheduler file not found: {scheduler_file}")
        try:
            if scheduler_file:
                return Client(scheduler_file=scheduler_file, timeout=timeout)
            return Client(scheduler_address, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            where = scheduler_address or scheduler_file
            raise ConnectionError(f"cannot reach the Dask scheduler at {where}: {exc}") from exc
    if cluster_type == "cpu":
        with dask.config.set(_worker_malloc_config()):
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                                   processes=True, **cluster_kwargs)
        return Client(cluster)
    if cluster_type == "gpu":
        return Client(_local_cuda_cluster(**cluster_kwargs))
    raise ValueError(f"unknown cluster_type {cluster_type!r}: use 'cpu' or 'gpu'")


#: glibc's mmap threshold for worker processes (64 MiB). Dask starts workers with
#: MALLOC_TRIM_THRESHOLD_=65536, which also freezes glibc's adaptive mmap threshold at 128 KiB:
#: every image tensor and batch then becomes a fresh mmap, page-faulted in and unmapped again,
#: which costs ~45% more CPU per image (bench/cpu_pipeline.py). A fixed, higher threshold keeps
#: those in the heap while the trim threshold still returns freed memory to the system.
MALLOC_MMAP_THRESHOLD = 64 * 2**20


def _worker_malloc_config() -> dict:
    key = "distributed.nanny.pre-spawn-environ"
    if "MALLOC_MMAP_THRESHOLD_" in (dask.config.get(key, {}) or {}):
        return {}  # the user chose
    return {f"{key}.MALLOC_MMAP_THRESHOLD_": MALLOC_MMAP_THRESHOLD}


def _local_cuda_cluster(**kwargs):
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        raise ImportError(
            "cluster_type='gpu' needs dask-cuda: pip install 'nemo_aesthetic[gpu]'"
        ) from exc
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("cluster_type='gpu' but no CUDA GPU is visible to PyTorch on this machine")
    kwargs.setdefault("rmm_pool_size", None)
    with dask.config.set(_worker_malloc_config()):
        return LocalCUDACluster(**kwargs)


def load_object_on_worker(key: str, loader: Callable[..., Any], *args, **kwargs) -> Any:
    """Return the object cached under ``key`` in this process, loading it on first use.

    One load per worker process however many partitions and calls use it; concurrent first
    uses from several worker threads wait for the one load instead of repeating it.
    """
    try:
        return _CACHE[key]
    except KeyError:
        pass
    with _CACHE_LOCK:
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key not in _CACHE:
            start = time.perf_counter()
            _CACHE[key] = loader(*args, **kwargs)
            _record_load(key, time.perf_counter() - start)
        return _CACHE[key]


def cached_keys() -> list[str]:
    """The keys of the objects held in this process; on workers: ``client.run(cached_keys)``."""
    return sorted(_CACHE)


def _record_load(key: str, seconds: float) -> None:
    logger.debug("loaded %s in %.1fs", key, seconds)
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:  # not in a Dask worker (synchronous scheduler, plain call)
        return
    worker.log_event(LOAD_EVENTS, {"key": key, "seconds": round(seconds, 3)})
