"""The shard engine's public pieces, on a real tar: the one duplicate-key rule, the pluggable
batch decode step, per-row failure reasons and per-batch progress."""
import io
import tarfile

import fsspec
import numpy as np
import torch
from factory import image_bytes

from nemo_aesthetic.engine import (BatchPreprocessor, SeenKeys, embed_stream, make_forward, read_shard)
from nemo_aesthetic.image.preprocess import ImageDecodeError, decode_image


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _mean_pixel(data: bytes):
    return torch.from_numpy(np.asarray(decode_image(data), dtype=np.float32).mean(axis=(0, 1)))


def test_read_shard_judges_duplicates_and_missing_images(tmp_path):
    path = str(tmp_path / "00000.tar")
    _tar(path, [("a.jpg", image_bytes(1)), ("a.txt", b"x"), ("b.txt", b"no image"),
                ("c.jpg", image_bytes(1)), ("a.jpg", image_bytes(1))])
    items = list(read_shard(fsspec.filesystem("file"), path))
    assert [(i.key, i.duplicate) for i in items] == [("a", False), ("b", False), ("c", False), ("a", True)]
    assert "no image member" in items[1].problem and "duplicate sample" in items[3].problem
    assert items[0].problem is None and items[0].image[0] == "jpg"


def test_seen_keys_maps_keys_through_identify():
    seen = SeenKeys(lambda key: int(key) if key.isdigit() else None)
    from nemo_aesthetic.datasets.shards import Sample

    assert seen.check(Sample("0042", [("jpg", None, b"")])) == (42, False)
    assert seen.check(Sample("42", [("jpg", None, b"")])) == (42, True)
    assert seen.check(Sample("x", [("jpg", None, b"")])) == (None, False)


class _WholeBatch(BatchPreprocessor):
    """A batched decoder: sees each chunk at once (as an nvJPEG batch decode would)."""

    def __init__(self):
        super().__init__(_mean_pixel, threads=1)
        self.chunks = []

    def start(self, payloads):
        self.chunks.append(len(payloads))
        results = []
        for data in payloads:
            try:
                results.append(_mean_pixel(data))
            except ImageDecodeError as exc:
                results.append(exc)
        return lambda: results


def test_embed_stream_batches_successes_in_order_and_reports_failures():
    good = [image_bytes(i) for i in range(5)]
    items = [(0, good[0]), (1, b"<html>"), (2, good[1]), (3, good[2]), (4, b""), (5, good[3]), (6, good[4])]
    model = torch.nn.Identity()
    failures, progress = {}, []
    pre = _WholeBatch()
    batches = list(embed_stream(items, pre, make_forward(model, [("s", lambda e: e.sum(1))], "cpu"),
                                batch_size=2, on_error=failures.__setitem__, on_batch=progress.append,
                                chunk_size=3))
    assert [b.tags for b in batches] == [[0, 2], [3, 5], [6]]
    assert set(failures) == {1, 4} and "0 bytes" in failures[4]
    assert pre.chunks == [3, 3, 1]
    expected = torch.nn.functional.normalize(torch.stack([_mean_pixel(good[0]), _mean_pixel(good[1])]), dim=-1)
    assert np.allclose(batches[0].embeddings, expected.numpy(), atol=1e-6)
    assert np.allclose(batches[0].scores["s"], expected.sum(1).numpy(), atol=1e-6)
    assert [p.images for p in progress] == [2, 2, 1] and progress[-1].total_images == 5
    assert sum(p.failed for p in progress) == 2 == progress[-1].total_failed


def test_default_preprocessor_threads_give_the_same_batches():
    good = [image_bytes(i, fmt="PNG") for i in range(4)]
    with BatchPreprocessor(_mean_pixel, threads=3) as pre:
        batches = list(embed_stream(enumerate(good), pre, make_forward(torch.nn.Identity(), [], "cpu"),
                                    batch_size=3, on_error=lambda *a: None))
    assert [b.tags for b in batches] == [[0, 1, 2], [3]]
