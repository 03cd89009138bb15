"""Many machines and object storage, for real: a `dask scheduler` and two `dask worker` processes
started from the command line, and an S3 endpoint (moto's server) on 127.0.0.1."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from factory import TINY_KWARGS, TINY_MODEL, model_loads, write_img2dataset

from nemo_aesthetic import get_client
from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.frames import embeddings_to_matrix
from nemo_aesthetic.image.classifiers import AestheticClassifier
from nemo_aesthetic.image.embedders import TimmImageEmbedder

DASK = os.path.join(os.path.dirname(sys.executable), "dask")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




@pytest.fixture(scope="module")
def dask_cli_cluster(tmp_path_factory):
    """`dask scheduler` + two `dask worker` processes, each with its own ports."""
    if not os.path.exists(DASK):
        pytest.fail(f"the dask command-line tool is not installed next to {sys.executable}")
    tmp = tmp_path_factory.mktemp("cluster")
    scheduler_file = str(tmp / "scheduler.json")
    port = _free_port()
    env = dict(os.environ, NEMO_AESTHETIC_OFFLINE="1", HF_HUB_OFFLINE="1",
               NEMO_AESTHETIC_HOME=str(tmp / "home"))
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard", "--scheduler-file", scheduler_file],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        while not os.path.exists(scheduler_file) and time.time() < deadline:
            time.sleep(0.2)
        for _ in range(2):
            procs.append(subprocess.Popen(
                [DASK, "worker", "--scheduler-file", scheduler_file, "--nworkers", "1", "--nthreads", "1",
                 "--host", "127.0.0.1", "--no-dashboard", "--no-nanny"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        client = get_client(scheduler_file=scheduler_file)
        client.wait_for_workers(2, timeout=120)
        client.close()
        yield {"address": f"tcp://127.0.0.1:{port}", "scheduler_file": scheduler_file, "pids": procs}
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _score(path, tiny_checkpoint, aesthetic_weights, storage_options=None):
    ds = ImageTextPairDataset.from_webdataset(path, id_col="key", storage_options=storage_options)
    embedder = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=tiny_checkpoint,
                                 batch_size=4, num_threads_per_worker=1,
                                 classifiers=[AestheticClassifier(model_path=aesthetic_weights)])
    return embedder(ds)


def _assert_same_rows(a: pd.DataFrame, b: pd.DataFrame):
    a = a.sort_values("key").reset_index(drop=True)
    b = b.sort_values("key").reset_index(drop=True)
    assert a["key"].tolist() == b["key"].tolist()
    np.testing.assert_allclose(a["aesthetic_score"].to_numpy(float), b["aesthetic_score"].to_numpy(float),
                               rtol=0, atol=1e-5, equal_nan=True)
    assert a["error"].fillna("").tolist() == b["error"].fillna("").tolist()
    (ea, va), (eb, vb) = embeddings_to_matrix(a["image_embedding"]), embeddings_to_matrix(b["image_embedding"])
    assert (va == vb).all() and va.any()
    np.testing.assert_allclose(ea, eb, rtol=0, atol=1e-5)


def test_cli_started_cluster_matches_local_cluster_row_for_row(
        tmp_path, dask_cli_cluster, cpu_client, tiny_checkpoint, aesthetic_weights):
    root = tmp_path / "ds"
    write_img2dataset(root, n_shards=3, rows_per_shard=6)
    local = _score(str(root), tiny_checkpoint, aesthetic_weights).metadata.compute()  # cpu_client is default

    for how in ("address", "file"):
        kwargs = ({"scheduler_address": dask_cli_cluster["address"]} if how == "address"
                  else {"scheduler_file": dask_cli_cluster["scheduler_file"]})
        with get_client(**kwargs) as client:
            assert len(client.scheduler_info()["workers"]) == 2
            scored = _score(str(root), tiny_checkpoint, aesthetic_weights)
            out = tmp_path / f"meta_{how}"
            scored.save_metadata(str(out))
            remote = ImageTextPairDataset.from_webdataset(str(out)).metadata.compute()
            _assert_same_rows(local, remote)

            scored.metadata["keep"] = scored.metadata["aesthetic_score"] >= float(np.nanmedian(local["aesthetic_score"]))
            summary = scored.to_webdataset(str(tmp_path / f"filtered_{how}"), filter_column="keep",
                                           samples_per_shard=4)
            assert summary["written"] == summary["kept_rows"] > 0
            loads = model_loads(client)
    # Two embedding runs on the same workers, yet each worker loaded each model at most once.
    assert len({worker for worker, _ in loads}) == 2
    assert loads and all(n == 1 for n in loads.values()), loads


# --------------------------------------------------------------------------- S3
@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_s3_dataset_scores_and_writes_like_local_files(tmp_path, s3_endpoint, cpu_client, tiny_checkpoint,
                                                      aesthetic_weights):
    import s3fs

    storage_options = {"key": "testing", "secret": "testing",
                       "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="curation")
    fs = s3fs.S3FileSystem(**storage_options)
    root = tmp_path / "ds"
    expected = write_img2dataset(root, n_shards=2, rows_per_shard=6)
    fs.put(str(root) + "/", "curation/ds/", recursive=True)
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("curation/ds")) == sorted(os.listdir(root))

    local = _score(str(root), tiny_checkpoint, aesthetic_weights).metadata.compute()
    scored = _score("s3://curation/ds", tiny_checkpoint, aesthetic_weights, storage_options)
    assert scored.tar_files[0].startswith("s3://")
    scored.save_metadata("s3://curation/meta")
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("curation/meta")) == ["00000.parquet", "00001.parquet"]
    from_s3 = ImageTextPairDataset.from_webdataset(
        "s3://curation/meta", storage_options=storage_options).metadata.compute()
    _assert_same_rows(local, from_s3)
    assert len(from_s3) == len(expected)

    scored.metadata["keep"] = scored.metadata["error"].isna()
    summary = scored.to_webdataset("s3://curation/filtered", filter_column="keep", samples_per_shard=5)
    n_ok = sum(e["status"] == "success" for e in expected.values())
    assert summary["written"] == n_ok
    out = ImageTextPairDataset.from_webdataset("s3://curation/filtered", storage_options=storage_options)
    assert len(out.metadata.compute()) == n_ok
    # bytes of every written image are the input's
    import tarfile

    with fs.open(out.tar_files[0], "rb") as f, tarfile.open(fileobj=f) as tar:
        images = {m.name: tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")}
    originals = {e["image"] for e in expected.values() if e["image"] is not None}
    assert images and set(images.values()) <= originals


# --------------------------------------------------------------------------- graph size
def test_task_graph_grows_linearly_with_shards(tmp_path, tiny_checkpoint, aesthetic_weights):
    """Tasks per shard are constant: the graph never grows with the number of images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def graph_tasks(n_shards: int) -> int:
        root = tmp_path / f"g{n_shards}"
        root.mkdir()
        for i in range(n_shards):
            pq.write_table(pa.table({"key": [f"{i:05d}0000"], "caption": ["x"]}), root / f"{i:05d}.parquet")
            (root / f"{i:05d}.tar").write_bytes(b"")
        return len(_score(str(root), tiny_checkpoint, aesthetic_weights).metadata.__dask_graph__())

    small, large = graph_tasks(20), graph_tasks(40)
    assert large == 2 * small, (small, large)


# --------------------------------------------------------------------------- worker settings
def test_cli_started_workers_get_the_drivers_backend_env_and_torch_threads(dask_cli_cluster, monkeypatch):
    """`dask worker` processes started before the driver, from the command line, get the driver's
    dataframe backend, its NEMO_AESTHETIC_* settings and their share of the host's cores for torch
    (two workers on this host), from get_client alone."""
    import dask

    from nemo_aesthetic.worker_settings import register_worker_settings

    def _worker_view(variable: str):  # nested: pickled by value (the workers cannot import this module)
        import dask
        import torch

        return dask.config.get("dataframe.backend"), os.environ.get(variable), torch.get_num_threads()

    monkeypatch.setenv("NEMO_AESTHETIC_TEST_SETTING", "from-the-driver")
    cores = len(os.sched_getaffinity(0))
    with dask.config.set({"dataframe.backend": "cudf"}):  # only read back here: nothing is computed with it
        client = get_client(scheduler_file=dask_cli_cluster["scheduler_file"])
    try:
        seen = client.run(_worker_view, "NEMO_AESTHETIC_TEST_SETTING")
        assert len(seen) == 2
        assert set(seen.values()) == {("cudf", "from-the-driver", max(1, cores // 2))}, seen
        register_worker_settings(client, torch_threads=3)
        assert {v[2] for v in client.run(_worker_view, "NEMO_AESTHETIC_TEST_SETTING").values()} == {3}
    finally:
        monkeypatch.delenv("NEMO_AESTHETIC_TEST_SETTING")
        register_worker_settings(client)  # the module's other tests share these workers: pandas again
        client.close()
