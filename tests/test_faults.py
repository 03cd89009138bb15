"""Faults, for real: a worker process killed mid-job, the driver killed mid-save."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow.parquet as pq
from factory import TINY_KWARGS, TINY_MODEL, write_img2dataset

from nemo_aesthetic import get_client
from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.image.classifiers import AestheticClassifier
from nemo_aesthetic.image.embedders import TimmImageEmbedder




def _scored(path, checkpoint, weights):
    ds = ImageTextPairDataset.from_webdataset(str(path))
    embedder = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=checkpoint,
                                 batch_size=8, num_threads_per_worker=1,
                                 classifiers=[AestheticClassifier(model_path=weights)])
    return embedder(ds)


def test_worker_killed_mid_job_gives_the_undisturbed_result(tmp_path, tiny_checkpoint, aesthetic_weights):
    root = tmp_path / "ds"
    write_img2dataset(root, n_shards=8, rows_per_shard=24, image_size=(320, 240))
    undisturbed = _scored(root, tiny_checkpoint, aesthetic_weights).metadata.compute(scheduler="sync")

    client = get_client(cluster_type="cpu", n_workers=2, threads_per_worker=1, dashboard_address=":0")
    try:
        pids = client.run(os.getpid)
        future = client.compute(_scored(root, tiny_checkpoint, aesthetic_weights).metadata)
        victim = None
        deadline = time.time() + 120
        while victim is None and time.time() < deadline:
            processing = client.processing()
            done = sum(1 for ts in client.cluster.scheduler.tasks.values() if ts.state == "memory")
            busy = [w for w, tasks in processing.items() if any("embed-shard" in str(k) for k in tasks)]
            if busy and done:  # mid-job: some partitions finished, one is being embedded right now
                victim = busy[0]
            time.sleep(0.05)
        assert victim is not None, "the job finished before a worker could be killed"
        os.kill(pids[victim], signal.SIGKILL)
        result = future.result(timeout=300)
        assert set(client.run(os.getpid).values()) != set(pids.values()), "the nanny restarted the worker"
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()

    a = undisturbed.sort_values("key").reset_index(drop=True)
    b = result.sort_values("key").reset_index(drop=True)
    assert a["key"].tolist() == b["key"].tolist()
    np.testing.assert_allclose(a["aesthetic_score"].to_numpy(float), b["aesthetic_score"].to_numpy(float),
                               atol=1e-5, equal_nan=True)
    assert a["error"].fillna("").tolist() == b["error"].fillna("").tolist()


SAVE_IN_PLACE = textwrap.dedent("""
    import sys, dask
    sys.path.insert(0, {tests!r})
    from test_faults import _scored
    dask.config.set(scheduler="sync")  # one shard after another, so a kill lands between and inside writes
    _scored({root!r}, {ckpt!r}, {weights!r}).save_metadata()
""")


def test_driver_killed_during_save_metadata_leaves_old_or_complete_files(tmp_path, tiny_checkpoint,
                                                                          aesthetic_weights):
    root = tmp_path / "ds"
    n_shards = 12
    write_img2dataset(root, n_shards=n_shards, rows_per_shard=16, image_size=(256, 256))
    names = [f"{i:05d}.parquet" for i in range(n_shards)]
    old = {n: (root / n).read_bytes() for n in names}

    script = SAVE_IN_PLACE.format(tests=os.path.dirname(__file__), root=str(root), ckpt=tiny_checkpoint,
                                  weights=aesthetic_weights)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            changed = [n for n in names if (root / n).read_bytes() != old[n]]
            if len(changed) >= 2:  # mid-save: some shards rewritten, others not yet
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the save finished before it could be killed: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()

    new, untouched = [], []
    for n in names:
        data = (root / n).read_bytes()
        if data == old[n]:
            untouched.append(n)
            continue
        table = pq.read_table(root / n)  # a complete, readable file, never a truncated one
        assert {"aesthetic_score", "image_embedding", "error"} <= set(table.column_names)
        assert table.num_rows == 16
        new.append(n)
    assert new and untouched, (new, untouched)
    # Leftovers of the interrupted write are hidden temporary files that readers ignore.
    ds = ImageTextPairDataset.from_webdataset(str(root))
    assert len(ds.shards) == n_shards
    assert len(ds.metadata.compute(scheduler="sync")) == n_shards * 16

    # Resuming writes exactly the shards the killed run did not, and leaves the finished ones alone.
    finished = {n: (root / n).read_bytes() for n in new}
    summary = _scored(root, tiny_checkpoint, aesthetic_weights).save_metadata(mode="resume")
    assert sorted(summary["skipped"]) == sorted(n.split(".")[0] for n in new)
    assert sorted(summary["written"]) == sorted(n.split(".")[0] for n in untouched)
    assert all((root / n).read_bytes() == data for n, data in finished.items())
    for n in names:
        assert pq.read_table(root / n).column("aesthetic_score").null_count < 16
