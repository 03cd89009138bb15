"""``nemo_curator.utils.distributed_utils`` under its legacy path: the cluster helpers legacy
image code imports (``get_client`` and the per-worker object cache), re-exported from
:mod:`nemo_aesthetic.distributed`.

Differences from NeMo Curator 0.x (also in README, "Coming from NeMo Curator 0.x"):
``load_object_on_worker`` works outside a Dask worker too (threads, the synchronous scheduler)
instead of raising ``NoWorkerError``, and caches in the worker process rather than as an
attribute of the ``Worker`` object. The text-curation readers and writers of that upstream module
(``read_data``, ``write_to_disk``, ...) are not part of this image-only package.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable

from distributed import Client, performance_report

from nemo_aesthetic import distributed as _distributed
from nemo_aesthetic.distributed import NoWorkerError, get_client

__all__ = ["NoWorkerError", "get_client", "get_current_client", "get_num_workers", "load_object_on_worker",
           "offload_object_on_worker", "performance_report_if"]


def load_object_on_worker(attr: str, load_object_function: Callable, load_object_kwargs: dict) -> Any:
    """The object cached under ``attr`` in this worker process, ``load_object_function(**load_object_kwargs)``
    on first use (NeMo Curator's signature: the loader's arguments come as one dict)."""
    return _distributed.load_object_on_worker(attr, load_object_function, **load_object_kwargs)


def offload_object_on_worker(attr: str) -> bool:
    """Forget the object cached under ``attr`` in this process (the next use loads it again)."""
    _distributed.forget_object_on_worker(attr)
    return True


def get_num_workers(client: Client | None) -> int | None:
    """How many workers the client's cluster has (None without a client)."""
    return None if client is None else len(client.scheduler_info()["workers"])


def get_current_client() -> Client | None:
    """The current (or most recent) client, or None when there is none."""
    try:
        return Client.current()
    except ValueError:
        return None


def performance_report_if(path: str | None = None,
                          report_name: str = "dask-profile.html") -> AbstractContextManager[Any]:
    """Dask's performance report written to ``path/report_name``; a no-op when ``path`` is None."""
    import os

    if path is None:
        return nullcontext()
    return performance_report(os.path.join(path, report_name))
