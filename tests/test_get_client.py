"""get_client: a local CPU cluster, or a connection to a scheduler started elsewhere.

Creating a LocalCluster costs seconds on a small machine, so the tests that need one share the
session's ``cpu_client``; the error paths are all decided before any cluster is created.
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
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


HEAP_HOLES = r"""
import json, os
from nemo_aesthetic.distributed import _malloc_trim, release_freed_memory

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

if _malloc_trim() is None or not os.path.exists("/proc/self/statm"):
    print(json.dumps(None))
else:
    freed, pins = [], []
    for _ in range(600):
        freed.append(bytearray(100_000))  # under glibc's 128 KiB mmap threshold: in the heap
        pins.append(bytearray(1_000))  # over pymalloc's 512 bytes: malloc'd right after it, kept
    del freed
    before = resident()
    release_freed_memory()
    print(json.dumps({"returned": before - resident(), "pins": len(pins)}))
"""


def test_release_freed_memory_returns_holes_below_live_allocations():
    """What both fronts call as batches go by: memory freed below a live allocation (which glibc's
    free never returns) goes back to the system. In a fresh process, so that no earlier test's
    heap holes take the pins' places."""
    out = subprocess.run([sys.executable, "-c", HEAP_HOLES], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result is None:
        pytest.skip("needs glibc's malloc_trim and /proc (Linux)")
    assert result["returned"] > 20 * 2**20, result  # of the ~57 MiB freed between the pins


def test_one_memory_releaser_per_thread_trims_at_most_once_a_second_across_partitions():
    """The stage executor's partitions share their thread's releaser: a stream of small partitions
    (a dedup cluster each) trims the heap once a second, not once per partition."""
    import threading

    from nemo_aesthetic.distributed import thread_memory_releaser

    releaser = thread_memory_releaser()
    assert thread_memory_releaser() is releaser
    releaser()
    first = releaser.last
    thread_memory_releaser()()  # the next partition, within the second: no second trim
    assert releaser.last == first
    other = []
    worker = threading.Thread(target=lambda: other.append(thread_memory_releaser()))
    worker.start()
    worker.join()
    assert other[0] is not releaser


# ------------------------------------------------------------------ NeMo Curator 0.x call shapes
UPSTREAM_PARAMETERS = [  # nemo_curator.utils.distributed_utils.get_client at v0.9.0, in order
    ("cluster_type", "cpu"), ("scheduler_address", None), ("scheduler_file", None),
    ("n_workers", os.cpu_count()), ("threads_per_worker", 1), ("nvlink_only", False), ("protocol", "tcp"),
    ("rmm_pool_size", "1024M"), ("enable_spilling", True), ("set_torch_to_use_rmm", False),
    ("rmm_async", True), ("rmm_maximum_pool_size", None), ("rmm_managed_memory", False),
    ("rmm_release_threshold", None),
]


def test_signature_is_nemo_curators_in_its_order():
    import inspect

    from nemo_aesthetic.utils.distributed_utils import get_client as legacy_get_client

    assert legacy_get_client is get_client
    params = list(inspect.signature(get_client).parameters.values())
    assert [(p.name, p.default) for p in params[:len(UPSTREAM_PARAMETERS)]] == UPSTREAM_PARAMETERS
    assert params[-1].kind is inspect.Parameter.VAR_KEYWORD


def test_legacy_gpu_keywords_on_cpu_give_a_working_cluster_and_one_warning():
    """What legacy notebooks pass unconditionally; positional up to rmm_pool_size as upstream orders it."""
    with pytest.warns(UserWarning) as record:
        client = get_client("cpu", None, None, 1, 1, False, "tcp", "4GB", enable_spilling=True,
                            set_torch_to_use_rmm=True, rmm_async=False, device_memory_limit="1GB",
                            CUDA_VISIBLE_DEVICES="0", dashboard_address=":0")
    try:
        ours = [str(w.message) for w in record if "GPU-only" in str(w.message)]
        assert len(ours) == 1
        for named in ("rmm_pool_size='4GB'", "set_torch_to_use_rmm=True", "rmm_async=False",
                      "device_memory_limit='1GB'", "CUDA_VISIBLE_DEVICES='0'"):
            assert named in ours[0]
        assert "enable_spilling" not in ours[0]  # left at its default: nothing was asked
        assert len(client.scheduler_info()["workers"]) == 1
        assert client.submit(sum, [1, 2]).result() == 3
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()


def test_gpu_options_map_to_dask_cuda_keywords():
    from nemo_aesthetic.distributed import GPU_ONLY_DEFAULTS, cuda_cluster_kwargs

    options = {**GPU_ONLY_DEFAULTS, "protocol": "ucx", "nvlink_only": True, "enable_spilling": False}
    kwargs = cuda_cluster_kwargs(options, {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert kwargs["protocol"] == "ucx" and kwargs["enable_cudf_spill"] is False
    assert kwargs["enable_nvlink"] is True and kwargs["enable_tcp_over_ucx"] is True
    assert kwargs["enable_infiniband"] is False and kwargs["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "enable_nvlink" not in cuda_cluster_kwargs({**GPU_ONLY_DEFAULTS, "nvlink_only": True}, {})  # tcp


@pytest.mark.skipif(importlib.util.find_spec("rmm") is None, reason="RMM is not installed")
def test_rmm_options_reach_dask_cuda_when_rmm_is_installed():
    from nemo_aesthetic.distributed import GPU_ONLY_DEFAULTS, cuda_cluster_kwargs

    kwargs = cuda_cluster_kwargs({**GPU_ONLY_DEFAULTS, "rmm_pool_size": "2GB", "rmm_release_threshold": "1GB"}, {})
    assert kwargs["rmm_pool_size"] == "2GB" and kwargs["rmm_release_threshold"] == "1GB"
    assert kwargs["rmm_async"] is True


@pytest.mark.skipif(importlib.util.find_spec("rmm") is not None, reason="RMM is installed")
def test_rmm_options_without_rmm_are_dropped_with_a_warning():
    from nemo_aesthetic.distributed import GPU_ONLY_DEFAULTS, cuda_cluster_kwargs

    with pytest.warns(UserWarning, match="rmm_pool_size='2GB'"):
        kwargs = cuda_cluster_kwargs({**GPU_ONLY_DEFAULTS, "rmm_pool_size": "2GB"}, {})
    assert not any(k.startswith("rmm_") for k in kwargs)


def _load_twice_with_upstream_signature():
    from nemo_aesthetic.utils.distributed_utils import load_object_on_worker, offload_object_on_worker

    calls = []

    def load(scale):
        calls.append(scale)
        return {"scale": scale, "pid": os.getpid()}

    first = load_object_on_worker("legacy-test-object", load, {"scale": 3})
    second = load_object_on_worker("legacy-test-object", load, {"scale": 3})
    offload_object_on_worker("legacy-test-object")
    third = load_object_on_worker("legacy-test-object", load, {"scale": 3})
    offload_object_on_worker("legacy-test-object")
    return first is second, third is not first, calls, first["pid"]


def test_legacy_load_object_on_worker_takes_a_kwargs_dict_and_loads_once(cpu_client):
    from nemo_aesthetic.utils.distributed_utils import get_current_client, get_num_workers

    same, reloaded, calls, pid = cpu_client.submit(_load_twice_with_upstream_signature, pure=False).result()
    assert same and reloaded and calls == [3, 3] and pid != os.getpid()
    assert get_num_workers(cpu_client) == 2 and get_num_workers(None) is None
    assert get_current_client() is not None


def test_freed_memory_releaser_runs_at_most_once_per_interval(monkeypatch):
    """The per-batch hand-back costs ~10 ms, so a stream of small batches calls it at most once
    per interval (the first call always runs)."""
    from nemo_aesthetic import distributed

    calls = []
    monkeypatch.setattr(distributed, "release_freed_memory", lambda: calls.append(1))
    release = distributed.FreedMemoryReleaser(seconds=0.2)
    for _ in range(50):
        release()
    assert len(calls) == 1
    time.sleep(0.25)
    release()
    assert len(calls) == 2


def test_gpu_cluster_without_cudf_starts_without_cudf_spilling(monkeypatch, caplog):
    """dask-cuda's LocalCUDACluster imports cuDF when enable_cudf_spill is set: on a GPU machine with
    torch but no cuDF the default enable_spilling=True must not ask for it (said once in the log)."""
    from nemo_aesthetic import distributed
    from nemo_aesthetic.distributed import GPU_ONLY_DEFAULTS, cuda_cluster_kwargs

    real = distributed._has_module
    monkeypatch.setattr(distributed, "_has_module", lambda name: False if name == "cudf" else real(name))
    monkeypatch.setattr(distributed, "_LOGGED_ONCE", set())
    with caplog.at_level("WARNING", logger="nemo_aesthetic.distributed"):
        first = cuda_cluster_kwargs(dict(GPU_ONLY_DEFAULTS), {})
        second = cuda_cluster_kwargs(dict(GPU_ONLY_DEFAULTS), {})
    assert first["enable_cudf_spill"] is False and second["enable_cudf_spill"] is False
    assert sum("cuDF is not installed" in r.getMessage() for r in caplog.records) == 1
    # where cuDF imports, the upstream default stands; a caller's own keyword always wins
    monkeypatch.setattr(distributed, "_has_module", lambda name: True if name == "cudf" else real(name))
    assert cuda_cluster_kwargs(dict(GPU_ONLY_DEFAULTS), {})["enable_cudf_spill"] is True
    assert cuda_cluster_kwargs(dict(GPU_ONLY_DEFAULTS), {"enable_cudf_spill": True})["enable_cudf_spill"] is True


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("dask_cuda") is None, reason="dask-cuda is not installed")
def test_gpu_cluster_starts_with_default_options_whether_or_not_cudf_is_installed():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from nemo_aesthetic.distributed import get_client

    client = get_client(cluster_type="gpu", n_workers=1)
    try:
        assert len(client.scheduler_info()["workers"]) >= 1
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
