"""get_client: a local CPU cluster, or a connection to a scheduler started elsewhere.

Creating a LocalCluster costs seconds on a small machine, so the tests that need one share the
session's ``cpu_client``; the error paths are all decided before any cluster is created.
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import time

import pytest

from nemo_aesthetic import get_client


def _pid():
    return os.getpid()


def test_cpu_cluster_runs_work_in_worker_processes(cpu_client):
    workers = cpu_client.scheduler_info()["workers"]
    assert len(workers) == 2
    assert all(w["nthreads"] == 1 for w in workers.values())
    assert cpu_client.submit(sum, [1, 2, 3]).result() == 6
    pids = set(cpu_client.run(_pid).values())
    assert len(pids) == 2 and os.getpid() not in pids  # processes, not threads of this one


def test_cpu_cluster_computes_a_dataset(cpu_client, img2dataset_dir):
    from nemo_aesthetic.datasets import ImageTextPairDataset

    root, expected = img2dataset_dir
    ds = ImageTextPairDataset.from_webdataset(str(root))
    df = cpu_client.compute(ds.metadata).result()
    assert sorted(df["key"]) == sorted(expected)


def test_connects_to_a_running_scheduler_by_address(cpu_client):
    address = cpu_client.scheduler.address
    client = get_client(scheduler_address=address, timeout="20s")
    try:
        assert client.scheduler.address == address
        assert set(client.scheduler_info()["workers"]) == set(cpu_client.scheduler_info()["workers"])
        assert client.submit(pow, 2, 10).result() == 1024
    finally:
        client.close()
    assert cpu_client.submit(pow, 3, 2).result() == 9  # the first client is unaffected


def test_connects_through_a_scheduler_file(cpu_client, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    scheduler_file.write_text(json.dumps({"type": "Scheduler", "address": cpu_client.scheduler.address}))
    client = get_client(scheduler_file=str(scheduler_file), timeout="20s")
    try:
        assert client.scheduler.address == cpu_client.scheduler.address
        assert client.submit(abs, -5).result() == 5
    finally:
        client.close()


def test_unknown_cluster_type_is_a_value_error():
    with pytest.raises(ValueError, match="tpu"):
        get_client(cluster_type="tpu")


def test_address_and_file_together_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        get_client(scheduler_address="tcp://127.0.0.1:8786", scheduler_file=str(tmp_path / "s.json"))


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when we leave: nothing listens there


def test_unreachable_scheduler_is_a_connection_error_naming_it():
    address = f"tcp://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(ConnectionError) as err:
        get_client(scheduler_address=address, timeout="2s")
    assert address in str(err.value)
    assert time.monotonic() - start < 30  # the timeout is honoured, not the 30 s default


def test_missing_scheduler_file_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "scheduler.json"
    with pytest.raises(OSError, match="scheduler file not found") as err:
        get_client(scheduler_file=str(missing), timeout="2s")
    assert str(missing) in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("dask_cuda") is not None, reason="dask-cuda is installed")
def test_gpu_without_dask_cuda_names_the_gpu_extra():
    with pytest.raises(ImportError, match=r"nemo_aesthetic\[gpu\]"):
        get_client(cluster_type="gpu")


def test_local_cluster_workers_keep_large_buffers_off_mmap(cpu_client):
    """Workers start with a fixed glibc mmap threshold (set before the process starts), so image
    tensors are not mmap'ed and unmapped one by one (see distributed.MALLOC_MMAP_THRESHOLD)."""
    from nemo_aesthetic.distributed import MALLOC_MMAP_THRESHOLD

    envs = cpu_client.run(lambda: os.environ.get("MALLOC_MMAP_THRESHOLD_"))
    assert len(envs) == 2 and set(envs.values()) == {str(MALLOC_MMAP_THRESHOLD)}
