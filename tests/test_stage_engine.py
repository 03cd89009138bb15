"""The stage front over the shard engine: the embedding stage decodes with the embedder's own
batch decoder (the tensor path: nvJPEG on a GPU), mixes pixel-only images into the same model
batches, and publishes per-image progress that the DaskExecutor logs."""
import io
import logging
import tarfile
import time

import numpy as np
import pytest
from distributed import Client
from factory import TINY_KWARGS, TINY_MODEL, add_member, image_bytes, write_img2dataset
from PIL import Image

from nemo_aesthetic import progress
from nemo_aesthetic.backends import dask as dask_backend
from nemo_aesthetic.engine import BatchProgress
from nemo_aesthetic.pipeline import Pipeline
from nemo_aesthetic.stages.file_partitioning import FilePartitioningStage
from nemo_aesthetic.stages.image.embedders.clip_embedder import ImageEmbeddingStage
from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage
from nemo_aesthetic.tasks import ImageBatch, ImageObject


def _mixed_batch(root) -> ImageBatch:
    """A reader batch of tar images, plus an image that only has pixels, plus one with nothing."""
    write_img2dataset(root, n_shards=1, rows_per_shard=6, fail_every=0)
    (task,) = FilePartitioningStage(str(root), file_extensions=[".tar"]).process()
    (batch,) = ImageReaderStage(task_batch_size=100, verbose=False).process(task)
    pixels = np.asarray(Image.open(io.BytesIO(image_bytes(77, (80, 120)))).convert("RGB"))
    batch.data.insert(2, ImageObject(image_path="mem://pixels", image_id="pixels", image_data=pixels))
    batch.data.insert(4, ImageObject(image_path="mem://nothing", image_id="nothing"))
    return batch


def _embed(batch: ImageBatch, checkpoint: str, decode: str, device: str | None = None) -> dict:
    stage = ImageEmbeddingStage(model_name=TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=checkpoint,
                                model_inference_batch_size=8, num_threads=2, decode=decode, device=device)
    out = stage.process(batch)
    return {im.image_id: im.embedding for im in out.data}, dict(out.errors)


@pytest.mark.parametrize("decode", ["tensor", "pil"])
def test_pixel_only_images_share_model_batches_with_tar_images(tmp_path, tiny_checkpoint, decode):
    """One model batch (8) holds tar images decoded by the embedder's batch decoder and an image
    the user gave as pixels; an image with neither is dropped with its reason, not a crash."""
    batch = _mixed_batch(tmp_path / "ds")
    embedded, errors = _embed(batch, tiny_checkpoint, decode)
    assert len(embedded) == 7 and "pixels" in embedded
    assert set(errors) == {"nothing"} and "no image data" in errors["nothing"]
    assert all(abs(np.linalg.norm(e) - 1) < 1e-4 for e in embedded.values())


def test_tensor_decode_matches_the_pil_reference(tmp_path, tiny_checkpoint):
    """The batched tensor decoder (libjpeg-turbo here, nvJPEG on a GPU) gives the PIL path's
    embeddings for the tar images, and the pixel-only image is embedded identically by both."""
    pil, _ = _embed(_mixed_batch(tmp_path / "a"), tiny_checkpoint, "pil")
    tensor, _ = _embed(_mixed_batch(tmp_path / "b"), tiny_checkpoint, "tensor")
    assert pil.keys() == tensor.keys()
    np.testing.assert_allclose(tensor["pixels"], pil["pixels"], atol=1e-6)
    cosine = [float(np.dot(pil[k], tensor[k])) for k in pil]
    assert min(cosine) > 0.995, cosine


@pytest.mark.gpu
def test_mixed_batch_on_cuda_matches_the_cpu_reference(tmp_path, tiny_checkpoint):
    """On a GPU the tar images come from nvJPEG as bf16 tensors on the device and the pixel-only
    one is moved there: one batch, no device mismatch, embeddings close to the CPU's."""
    cpu, _ = _embed(_mixed_batch(tmp_path / "a"), tiny_checkpoint, "pil", device="cpu")
    cuda, errors = _embed(_mixed_batch(tmp_path / "b"), tiny_checkpoint, "auto", device="cuda")
    assert cuda.keys() == cpu.keys() and set(errors) == {"nothing"}
    assert min(float(np.dot(cpu[k], cuda[k])) for k in cpu) > 0.99


def _pipeline(root, checkpoint) -> Pipeline:
    return Pipeline("scoring", stages=[
        FilePartitioningStage(str(root), file_extensions=[".tar"]),
        ImageReaderStage(task_batch_size=3, verbose=False),
        ImageEmbeddingStage(model_name=TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=checkpoint,
                            model_inference_batch_size=2, num_threads=1)])


def test_stage_pipeline_publishes_per_image_progress(tmp_path, tiny_checkpoint, cpu_client):
    """Each partition's images are counted as the embedding stage goes (a message per model batch,
    throttled) and the partition says when it is finished, with the count of images it dealt with."""
    write_img2dataset(tmp_path / "ds", n_shards=2, rows_per_shard=7, fail_every=0)
    heard = []
    cpu_client.subscribe_topic(progress.TOPIC, lambda event: heard.append(event[1]))
    try:
        out = _pipeline(tmp_path / "ds", tiny_checkpoint).run(cpu_client)
        deadline = time.monotonic() + 10
        while sum(m["finished"] for m in heard) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        cpu_client.unsubscribe_topic(progress.TOPIC)
    assert sum(len(b.data) for b in out) == 14
    for partition in ("ds/0", "ds/1"):
        mine = [m for m in heard if m["shard"] == partition]
        assert mine[0]["done"] == 2 and not mine[0]["finished"] and mine[0]["rows"] is None, mine
        assert mine[-1]["finished"] and mine[-1]["done"] == 7, mine


def test_executor_logs_progress_lines(tmp_path, tiny_checkpoint, cpu_client, caplog, monkeypatch):
    """A user running Pipeline.run (who does not listen to the events themselves) sees the
    images counted, and again on the next run (the executor removes its handler)."""
    write_img2dataset(tmp_path / "ds", n_shards=2, rows_per_shard=5, fail_every=0)
    monkeypatch.setattr(dask_backend, "PROGRESS_LOG_INTERVAL", 0.0)
    with Client(cpu_client.cluster) as client, caplog.at_level(logging.INFO, logger="nemo_aesthetic"):
        for _ in range(2):
            caplog.clear()
            _pipeline(tmp_path / "ds", tiny_checkpoint).run(client)
            lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pipeline progress:")]
            counts = [int(line.split()[2]) for line in lines]
            assert counts == sorted(counts) and all("/2 partitions" in line for line in lines), lines
            assert lines[-1].startswith("pipeline progress: 10 images") and lines[-1].endswith("2/2 partitions")


def test_shard_progress_continues_over_streams_and_finishes_with_its_count():
    heard = []
    with progress.subscribe_local(heard.append):
        tracker = progress.ShardProgress("p", None, interval=0)
        tracker(BatchProgress(images=3, failed=1, seconds=0.1, total_images=3, total_failed=1))
        tracker.advance(5)  # the stream dealt with 5 (one failure came after its last batch)
        tracker(BatchProgress(images=2, failed=0, seconds=0.1, total_images=2, total_failed=0))
        tracker.finish()
    assert [m["done"] for m in heard] == [4, 7, 7] and heard[-1]["finished"]



def test_embedding_stage_streams_across_reader_batches(tmp_path, tiny_checkpoint, caplog):
    """Through the executor's chain, model batches span reader batches (the decoder never waits
    at a batch edge), yet every reader batch comes out in order, whole, with the embeddings and
    drop reasons it gets when embedded on its own."""
    from nemo_aesthetic.backends.dask import stream

    (tmp_path / "ds").mkdir()
    with tarfile.open(tmp_path / "ds" / "00000.tar", "w") as tar:
        for i in range(10):  # the 5th image (in the 2nd reader batch) is cut short: it fails to decode
            data = image_bytes(i, (64, 48))
            add_member(tar, f"{i:04d}.jpg", data[:len(data) // 2] if i == 4 else data)
    (task,) = FilePartitioningStage(str(tmp_path / "ds"), file_extensions=[".tar"]).process()
    reader = ImageReaderStage(task_batch_size=3, verbose=False)
    make = lambda: ImageEmbeddingStage(model_name=TINY_MODEL, model_kwargs=TINY_KWARGS,  # noqa: E731
                                       checkpoint_path=tiny_checkpoint, model_inference_batch_size=4,
                                       num_threads=1, verbose=True)
    alone = [make().process(batch) for batch in reader.process(task)]
    with caplog.at_level(logging.INFO, logger="nemo_aesthetic"):
        streamed = list(stream([reader, make()], [task]))
    assert [len(b.data) for b in streamed] == [3, 2, 3, 1] == [len(b.data) for b in alone]
    assert [[key for key, _ in b.errors] for b in streamed] == [[], ["0004"], [], []]
    for a, b in zip(alone, streamed):
        assert [im.image_id for im in a.data] == [im.image_id for im in b.data] and a.errors == b.errors
        np.testing.assert_allclose(np.stack([im.embedding for im in b.data]),
                                   np.stack([im.embedding for im in a.data]), atol=1e-6)
    sizes = [int(r.getMessage().split()[3]) for r in caplog.records if r.getMessage().startswith("Generated embeddings")]
    assert sizes[-3:] == [4, 4, 1], sizes  # 9 decodable images in model batches of 4, across reader batches of 3
