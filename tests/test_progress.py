"""Per-image progress, carried as data: Dask worker events on a real LocalCluster, in-process
handlers without one, and the tally that turns them into a rate and an ETA."""
import time

from factory import TINY_KWARGS, TINY_MODEL, write_img2dataset

from nemo_aesthetic import progress
from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.engine import BatchProgress
from nemo_aesthetic.image.classifiers import AestheticClassifier
from nemo_aesthetic.image.embedders import TimmImageEmbedder


def _batch(total_images, total_failed=0):
    return BatchProgress(images=2, failed=0, seconds=0.1, total_images=total_images, total_failed=total_failed)


def test_shard_progress_is_throttled_but_always_reports_the_first_batch_and_the_end():
    heard = []
    with progress.subscribe_local(heard.append):
        every = progress.ShardProgress("00007", rows=10, interval=0)
        for n in (2, 4, 6):
            every(_batch(n, total_failed=1))
        every.finish()
        seldom = progress.ShardProgress("00008", rows=10, interval=3600)
        for n in (2, 4, 6):
            seldom(_batch(n))
        seldom.finish()
    progress.publish({"shard": "x", "rows": 1, "done": 1, "finished": True})  # nobody listens now
    assert [(m["shard"], m["done"], m["finished"]) for m in heard] == [
        ("00007", 3, False), ("00007", 5, False), ("00007", 7, False), ("00007", 10, True),
        ("00008", 2, False), ("00008", 10, True)]


def test_tally_gives_rate_and_eta_from_the_first_message_on():
    now = [100.0]
    tally = progress.ProgressTally(total_rows=1000, total_shards=2, clock=lambda: now[0])
    assert tally.add({"shard": "a", "rows": 500, "done": 10, "finished": False}) == 10
    assert tally.rate() is None  # one point: no rate yet (the model load is not counted)
    now[0] += 10
    assert tally.add({"shard": "a", "rows": 500, "done": 30, "finished": False}) == 20
    assert tally.add({"shard": "a", "rows": 500, "done": 20, "finished": False}) == 0  # late, older message
    assert tally.add({"shard": "b", "rows": 500, "done": 10, "finished": False}) == 10
    assert tally.rate() == 3.0  # 30 rows in 10 s
    assert tally.line() == "40/1,000 images (4.0%)  3.00 images/s  ETA 5m20s  0/2 shards"
    tally.add({"shard": "a", "rows": 500, "done": 500, "finished": True})
    assert not tally.all_finished.is_set()
    tally.add({"shard": "b", "rows": 500, "done": 500, "finished": True})
    assert tally.all_finished.is_set() and tally.rows_done == 1000
    assert progress.format_seconds(7384) == "2h03m"


def test_workers_publish_per_batch_progress_as_dask_events(tmp_path, tiny_checkpoint, aesthetic_weights, cpu_client):
    write_img2dataset(tmp_path / "ds", n_shards=2, rows_per_shard=6, fail_every=0)
    ds = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
    emb = TimmImageEmbedder(TINY_MODEL, checkpoint_path=tiny_checkpoint, model_kwargs=TINY_KWARGS, batch_size=2,
                            classifiers=[AestheticClassifier(model_path=aesthetic_weights)])
    heard = []
    cpu_client.subscribe_topic(progress.TOPIC, lambda event: heard.append(event[1]))
    try:
        cpu_client.compute(emb(ds).metadata).result()
        deadline = time.monotonic() + 10
        while sum(m["finished"] for m in heard) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        cpu_client.unsubscribe_topic(progress.TOPIC)
    for shard in ("00000", "00001"):
        mine = [m for m in heard if m["shard"] == shard]
        assert mine[0] == {"shard": shard, "rows": 6, "done": 2, "finished": False, "worker": mine[0]["worker"]}
        assert mine[-1]["finished"] and mine[-1]["done"] == 6, mine
        assert mine[0]["worker"] in cpu_client.scheduler_info()["workers"]
    # The scheduler keeps them too (the dashboard, client.get_events).
    assert len(cpu_client.get_events(progress.TOPIC)) >= 4
