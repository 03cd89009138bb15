"""Dask clusters and per-worker state.

``get_client`` starts a local cluster (CPU: ``LocalCluster``; GPU: dask-cuda's
``LocalCUDACluster``, one worker per GPU) or connects to one started elsewhere with the standard
``dask scheduler`` / ``dask worker`` commands. Its signature is NeMo Curator 0.x's, argument for
argument, so legacy code runs unchanged: the GPU-only keywords configure dask-cuda on a GPU
cluster and are ignored on a CPU one, with one warning naming those that were set (legacy
notebooks pass them unconditionally; on a CPU cluster they would only make every worker fail to
start). ``load_object_on_worker`` keeps expensive objects (models) alive once per worker process,
so a model is loaded once, not once per partition; each load is logged and, on a Dask worker,
recorded as a scheduler event (topic :data:`LOAD_EVENTS`, ``{"key", "seconds", "worker"}``), so
``client.get_events(LOAD_EVENTS)`` or the dashboard shows which worker loaded which model and how
long it took.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
import warnings
from typing import Any, Callable, Literal

import dask
from distributed import Client, LocalCluster

_CACHE: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()
_KEY_LOCKS: dict[str, threading.Lock] = {}
#: The Dask event topic of model loads (see :func:`load_object_on_worker`).
LOAD_EVENTS = "nemo_aesthetic.load"
logger = logging.getLogger(__name__)

#: get_client's GPU-only keywords with their (upstream) defaults.
GPU_ONLY_DEFAULTS = {
    "nvlink_only": False, "protocol": "tcp", "rmm_pool_size": "1024M", "enable_spilling": True,
    "set_torch_to_use_rmm": False, "rmm_async": True, "rmm_maximum_pool_size": None,
    "rmm_managed_memory": False, "rmm_release_threshold": None,
}
#: ``LocalCUDACluster`` keywords that ``LocalCluster`` does not take: passed through
#: ``**cluster_kwargs`` to a CPU cluster they are dropped (with the warning), not handed to
#: workers that would fail to start with them.
CUDA_CLUSTER_ONLY_KWARGS = frozenset({
    "CUDA_VISIBLE_DEVICES", "device_memory_limit", "enable_cudf_spill", "cudf_spill_stats",
    "jit_unspill", "log_spilling", "rmm_pool_size", "rmm_maximum_pool_size", "rmm_managed_memory",
    "rmm_async", "rmm_allocator_external_lib_list", "rmm_release_threshold", "rmm_log_directory",
    "rmm_track_allocations", "enable_tcp_over_ucx", "enable_infiniband", "enable_nvlink",
    "enable_rdmacm", "pre_import", "shared_filesystem",
})


class NoWorkerError(Exception):
    """The cluster has no workers (NeMo Curator's name for it)."""


def get_client(cluster_type: Literal["cpu", "gpu"] = "cpu", scheduler_address: str | Any | None = None,
               scheduler_file: str | None = None, n_workers: int | None = os.cpu_count(),
               threads_per_worker: int = 1, nvlink_only: bool = False, protocol: Literal["tcp", "ucx"] = "tcp",
               rmm_pool_size: str | int | None = "1024M", enable_spilling: bool = True,
               set_torch_to_use_rmm: bool = False, rmm_async: bool = True,
               rmm_maximum_pool_size: str | int | None = None, rmm_managed_memory: bool = False,
               rmm_release_threshold: str | int | None = None, timeout: str | int = "30s",
               **cluster_kwargs) -> Client:
    """A ``distributed.Client``: to an existing cluster, or to a new local one.

    The arguments are NeMo Curator 0.x's, in its order (``timeout`` is ours and comes last).

    Args:
        cluster_type: "cpu" (``LocalCluster`` with worker processes) or "gpu" (dask-cuda's
            ``LocalCUDACluster``, one worker per visible GPU; needs the ``gpu`` extra).
        scheduler_address: connect to a running scheduler (``tcp://host:8786``, or a cluster
            object) instead; the cluster options below are then unused.
        scheduler_file: connect using the JSON file ``dask scheduler --scheduler-file`` wrote.
        n_workers, threads_per_worker: size of a local CPU cluster (a GPU cluster has one
            worker per visible GPU; there ``threads_per_worker=2`` runs two shards at a time per
            GPU, so one shard's reading and decoding overlaps the other's forward passes).
        nvlink_only, protocol, rmm_pool_size, enable_spilling, set_torch_to_use_rmm, rmm_async,
            rmm_maximum_pool_size, rmm_managed_memory, rmm_release_threshold: GPU clusters only,
            with NeMo Curator's meanings and defaults (``enable_spilling`` is cuDF spilling,
            ``set_torch_to_use_rmm`` makes PyTorch allocate from the RMM pool on every worker,
            ``nvlink_only`` with ``protocol="ucx"`` uses UCX over NVLink only). On a CPU cluster
            they are ignored, with one warning naming those given other values than the defaults.
        timeout: how long to wait for an existing scheduler before giving up.
        cluster_kwargs: passed to the local cluster (e.g. ``memory_limit``). ``LocalCUDACluster``-
            only keywords (``CUDA_VISIBLE_DEVICES``, ``device_memory_limit``, ...) are ignored
            on a CPU cluster like the GPU-only arguments above.
    """
    if cluster_type not in ("cpu", "gpu"):
        raise ValueError(f"unknown cluster_type {cluster_type!r}: use 'cpu' or 'gpu'")
    if scheduler_address and scheduler_file:
        raise ValueError("give scheduler_address or scheduler_file, not both")
    if scheduler_address or scheduler_file:
        return _with_worker_settings(_connect(scheduler_address, scheduler_file, timeout))
    _require_main_guard(cluster_type == "gpu" or cluster_kwargs.get("processes", True))
    gpu_options = {"nvlink_only": nvlink_only, "protocol": protocol, "rmm_pool_size": rmm_pool_size,
                   "enable_spilling": enable_spilling, "set_torch_to_use_rmm": set_torch_to_use_rmm,
                   "rmm_async": rmm_async, "rmm_maximum_pool_size": rmm_maximum_pool_size,
                   "rmm_managed_memory": rmm_managed_memory, "rmm_release_threshold": rmm_release_threshold}
    if cluster_type == "gpu":
        if threads_per_worker != 1:
            cluster_kwargs.setdefault("threads_per_worker", threads_per_worker)
        return _local_cuda_client(gpu_options, cluster_kwargs)
    ignored = {k: v for k, v in gpu_options.items() if v != GPU_ONLY_DEFAULTS[k]}
    ignored.update({k: cluster_kwargs.pop(k) for k in sorted(CUDA_CLUSTER_ONLY_KWARGS & set(cluster_kwargs))})
    if ignored:
        warnings.warn("get_client(cluster_type='cpu') ignores GPU-only options: "
                      + ", ".join(f"{k}={v!r}" for k, v in ignored.items())
                      + " (they configure dask-cuda's LocalCUDACluster)", UserWarning, stacklevel=2)
    cluster_kwargs.setdefault("processes", True)
    with dask.config.set(_worker_malloc_config()):
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, **cluster_kwargs)
    return _with_worker_settings(Client(cluster))


def _with_worker_settings(client: Client, **settings) -> Client:
    """``client``, its workers given this process's settings (:mod:`nemo_aesthetic.worker_settings`)."""
    from nemo_aesthetic.worker_settings import register_worker_settings

    try:
        register_worker_settings(client, **settings)
    except Exception as exc:  # e.g. workers without nemo_aesthetic installed: they cannot run our tasks either
        logger.warning("could not register nemo_aesthetic's settings with the workers: %s", exc)
    return client


def _require_main_guard(worker_processes: bool) -> None:
    """A script that starts a local cluster outside ``if __name__ == "__main__":`` stops here with
    one line saying what to add, instead of hundreds from workers that import it again."""
    if worker_processes:
        from nemo_aesthetic.script_guard import require_main_guard

        require_main_guard(dask.config.get("distributed.worker.multiprocessing-method", "spawn"))


def _connect(scheduler_address, scheduler_file: str | None, timeout) -> Client:
    if scheduler_file and not os.path.exists(scheduler_file):
        raise FileNotFoundError(f"scheduler file not found: {scheduler_file}")
    try:
        if scheduler_file:
            return Client(scheduler_file=scheduler_file, timeout=timeout)
        return Client(scheduler_address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        where = scheduler_address or scheduler_file
        raise ConnectionError(f"cannot reach the Dask scheduler at {where}: {exc}") from exc


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


def release_freed_memory() -> None:
    """Give the free pages inside glibc's malloc heaps back to the system (``malloc_trim(0)``);
    a no-op where the C library has none (macOS, musl).

    glibc returns memory only from the top of a heap, so a long-lived allocation made after a
    batch's large temporaries (JPEG bytes, model activations) keeps the freed space below it
    resident. A stream of batches keeps a little of each (in the stage front each image's
    ``embedding`` views its batch's embeddings array), so without this the process's footprint
    grew with the number of batches, not the batch (BENCHMARKS.md, "Memory while embedding a big
    shard"). Both fronts call it as a shard streams; one call costs ~10 ms.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class FreedMemoryReleaser:
    """:func:`release_freed_memory` for a stream of batches, at most every ``seconds`` (the first
    call releases): a call costs ~10 ms, which per batch of small images would be a few percent
    of the work, while a second's worth of batches pins little."""

    def __init__(self, seconds: float = 1.0):
        self.seconds = seconds
        self.last: float | None = None

    def __call__(self) -> None:
        now = time.monotonic()
        if self.last is None or now - self.last >= self.seconds:
            release_freed_memory()
            self.last = time.monotonic()


def current_client() -> Client | None:
    """The running distributed client work is handed to now (the default client), or None."""
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:
        return None
    return client if client.status == "running" else None


def compute_client() -> Client | None:
    """:func:`current_client`, unless dask's ``scheduler`` setting sends ``.compute()`` elsewhere
    (``--cluster sync``, or a ``dask.config.set(scheduler="sync")`` block): code that mixes a
    collection's ``.compute()`` with ``client.map`` must then keep to one process too."""
    if dask.config.get("scheduler", None) not in (None, "dask.distributed", "distributed"):
        return None
    return current_client()


_RELEASERS = threading.local()


def thread_memory_releaser() -> FreedMemoryReleaser:
    """This thread's one :class:`FreedMemoryReleaser`, shared by the partitions it runs: a stream
    of small partitions (a semantic-dedup cluster each, ~50 ms of work) then trims the heap at most
    once a second, not once per partition (~10 ms each: a fifth of the work)."""
    releaser = getattr(_RELEASERS, "releaser", None)
    if releaser is None:
        releaser = _RELEASERS.releaser = FreedMemoryReleaser()
    return releaser


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def cuda_cluster_kwargs(gpu_options: dict, cluster_kwargs: dict) -> dict:
    """``LocalCUDACluster`` keywords for get_client's GPU options, as NeMo Curator 0.x maps them.

    ``enable_spilling`` becomes cuDF spilling on the workers, where cuDF is installed: dask-cuda's
    ``LocalCUDACluster(enable_cudf_spill=True)`` imports cuDF in its constructor (dask-cuda 26.10),
    so on a torch-only GPU machine the default would stop the cluster from starting; there it is
    left off and logged once (there is no cuDF memory to spill). ``nvlink_only`` with UCX turns on
    UCX over NVLink only. RMM options are dropped (with a warning) when RMM is not installed,
    where dask-cuda would otherwise fail every worker at start-up.
    """
    spill = gpu_options["enable_spilling"]
    if spill and "enable_cudf_spill" not in cluster_kwargs and not _has_module("cudf"):
        _log_once("enable_spilling=True: cuDF is not installed, so LocalCUDACluster starts without "
                  "enable_cudf_spill (dask-cuda imports cuDF for it; there is no cuDF memory to spill)")
        spill = False
    kwargs = {"protocol": gpu_options["protocol"], "enable_cudf_spill": spill}
    rmm_options = {k: gpu_options[k] for k in ("rmm_pool_size", "rmm_async", "rmm_maximum_pool_size",
                                               "rmm_managed_memory", "rmm_release_threshold")}
    if _has_module("rmm"):
        kwargs.update(rmm_options)
    else:
        given = {k: v for k, v in rmm_options.items() if v != GPU_ONLY_DEFAULTS[k]}
        if given:
            warnings.warn("RMM is not installed: ignoring " + ", ".join(f"{k}={v!r}" for k, v in given.items()),
                          UserWarning, stacklevel=3)
    if gpu_options["nvlink_only"] and gpu_options["protocol"] == "ucx":
        kwargs.update(enable_tcp_over_ucx=True, enable_nvlink=True, enable_infiniband=False, enable_rdmacm=False)
    kwargs.update(cluster_kwargs)  # the caller's own LocalCUDACluster keywords win
    return kwargs


_LOGGED_ONCE: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _LOGGED_ONCE:
        _LOGGED_ONCE.add(message)
        logger.warning(message)


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _local_cuda_client(gpu_options: dict, cluster_kwargs: dict) -> Client:
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        raise ImportError(
            "cluster_type='gpu' needs dask-cuda: pip install 'nemo_aesthetic[gpu]'"
        ) from exc
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("cluster_type='gpu' but no CUDA GPU is visible to PyTorch on this machine")
    kwargs = cuda_cluster_kwargs(gpu_options, cluster_kwargs)
    with dask.config.set(_worker_malloc_config()):
        client = Client(LocalCUDACluster(**kwargs))
    if gpu_options["set_torch_to_use_rmm"]:
        _set_torch_to_use_rmm()
    # (a plugin, not client.run: a worker the nanny restarts gets the settings again)
    _with_worker_settings(client, torch_uses_rmm=gpu_options["set_torch_to_use_rmm"])
    if gpu_options["enable_spilling"] and _has_module("cudf"):
        import cudf

        cudf.set_option("spill", True)  # in this process too, as NeMo Curator does
    return client


def _set_torch_to_use_rmm() -> None:
    """PyTorch allocates from RMM's pool, so it and cuDF share one pool instead of competing."""
    import torch
    from rmm.allocators.torch import rmm_torch_allocator

    if torch.cuda.get_allocator_backend() == "pluggable":
        warnings.warn("PyTorch already uses a pluggable allocator; not switching it to RMM", stacklevel=2)
        return
    torch.cuda.memory.change_current_allocator(rmm_torch_allocator)


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


def forget_object_on_worker(key: str) -> None:
    """Drop the object cached under ``key`` in this process; the next use loads it again."""
    with _CACHE_LOCK:
        _CACHE.pop(key, None)
