"""The tensor (GPU) preprocessing path, run on the CPU against the PIL reference path.

The same code runs on CUDA with nvJPEG; here torchvision decodes with libjpeg-turbo, through the
same batched ``decode_jpeg(list)`` call. What differs from the reference is the resampling
(torchvision's tensor bicubic vs PIL's), measured here on real photographs at web sizes.
"""
import io
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from factory import (TINY_KWARGS, TINY_MODEL, decode_corpus, encode, image_bytes, oversampled, web_photo,
                     write_img2dataset)
from PIL import Image

from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.frames import embeddings_to_matrix
from nemo_aesthetic.image.embedders import TimmImageEmbedder
from nemo_aesthetic.engine import make_forward as _make_forward
from nemo_aesthetic.image.preprocess import ImageDecodeError, cpu_transform, make_preprocessor
from nemo_aesthetic.image.tensor_preprocess import (
    TensorBatchPreprocessor,
    device_decodable,
    jpeg_header,
    make_tensor_preprocessor,
)


@pytest.fixture(scope="module")
def tiny_model():
    import timm

    torch.manual_seed(0)
    return timm.create_model(TINY_MODEL, pretrained=False, **TINY_KWARGS).eval()


def outcomes(results: list) -> list:
    return [str(r) if isinstance(r, ImageDecodeError) else "ok" for r in results]


def test_jpeg_header_reads_what_pil_reads():
    photos = [web_photo(i, progressive=i % 3 == 0) for i in range(6)]
    gray = encode(Image.open(io.BytesIO(photos[1])).convert("L"))
    cmyk = encode(Image.open(io.BytesIO(photos[2])).convert("CMYK"))
    for data in [*photos, gray, cmyk]:
        header = jpeg_header(data)
        with Image.open(io.BytesIO(data)) as image:
            assert (header.width, header.height) == image.size
            assert header.components == len(image.getbands())
            assert (header.frame == 0xC2) == bool(image.info.get("progressive"))
            assert device_decodable(header, data) == (image.mode in ("RGB", "L") and header.frame == 0xC0)
    for not_jpeg in (b"", b"\xff\xd8", b"<html>", image_bytes(1, fmt="PNG"), b"\xff\xd8\xff\xe0\x00"):
        assert jpeg_header(not_jpeg) is None


def test_batch_gives_each_image_the_pil_paths_outcome_and_close_pixels(tiny_model):
    cases = decode_corpus()
    names, payloads = list(cases), list(cases.values())
    pil = make_preprocessor(cpu_transform(tiny_model), max_pixels=5_000_000)
    reference = []
    for data in payloads:
        try:
            reference.append(pil(data))
        except ImageDecodeError as exc:
            reference.append(exc)
    batcher = TensorBatchPreprocessor(tiny_model, "cpu", max_pixels=5_000_000)
    with ThreadPoolExecutor(2) as pil_pool:
        batch = batcher(payloads, pil_pool)
    got = batch.per_payload(len(payloads))
    assert dict(zip(names, outcomes(got))) == dict(zip(names, outcomes(reference)))
    assert outcomes(got).count("ok") == 11  # the corpus is not all failures
    assert batch.images.shape == (11, 3, 224, 224) and batch.images.dtype == torch.float32
    worst = {}
    for name, ours, ref in zip(names, got, reference):
        if isinstance(ref, ImageDecodeError):
            continue
        diff = (ours - ref).abs()
        worst[name] = (float(diff.mean()), float(diff.max()))
    # Normalised units (one 8-bit level is ~0.015): resampling differences only.
    assert max(m for m, _ in worst.values()) < 0.01, worst
    assert max(x for _, x in worst.values()) < 0.6, worst
    # Through PIL (CMYK, PNG, progressive): the very pixels of the reference's decode.
    for name in ("cmyk", "png", "photo_progressive", "truncated_with_eoi"):
        assert worst[name][0] < 0.01, (name, worst[name])


def test_batch_equals_timm_transform_applied_image_by_image(tiny_model):
    """Grouping equal sizes into one resize call and normalising once per batch change nothing:
    the batch equals timm's own transform objects applied to each decoded image alone."""
    from torchvision.io import ImageReadMode, decode_jpeg

    payloads = [web_photo(11), web_photo(11), web_photo(12), web_photo(13, long_side=(700, 700))]
    steps = cpu_transform(tiny_model).transforms  # Resize, CenterCrop, MaybeToTensor, Normalize
    expected = []
    for data in payloads:
        x = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        x = steps[1](steps[0](x)).float() / 255.0
        expected.append(steps[3](x))
    batch = TensorBatchPreprocessor(tiny_model, "cpu")(payloads)
    assert batch.rows == [0, 1, 2, 3] and not batch.failures
    torch.testing.assert_close(batch.images, torch.stack(expected), atol=2e-6, rtol=0)


def test_one_decode_call_per_batch_and_a_refused_image_does_not_fail_it(tiny_model, monkeypatch):
    import torchvision.io

    calls = []
    real = torchvision.io.decode_jpeg

    def spy(data, *args, **kwargs):
        calls.append(len(data) if isinstance(data, list) else 1)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", spy)
    good = [web_photo(20 + i, long_side=(640, 900)) for i in range(5)]
    batcher = TensorBatchPreprocessor(tiny_model, "cpu")
    batcher(good)
    assert calls == [5]  # the whole batch in one call
    calls.clear()
    broken = oversampled(image_bytes(3, (320, 240)))  # markers whole, but no decoder takes it
    batch = batcher([good[0], broken, good[1]])
    assert calls == [2]  # its sampling factors name no chroma subsampling: PIL; the others one call
    assert batch.rows == [0, 2] and "cannot decode image" in str(batch.failures[1])


def test_output_dtype_follows_the_model(tiny_model):
    payloads = [web_photo(30), web_photo(31)]
    full = TensorBatchPreprocessor(tiny_model, "cpu")(payloads).images
    half = TensorBatchPreprocessor(tiny_model, "cpu", dtype=torch.bfloat16)(payloads).images
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=0.02, rtol=0.01)


def test_tensor_path_matches_pil_path_on_real_images(tiny_model, testdata):
    files = sorted((testdata / "odd_images").iterdir())
    if not files:
        pytest.skip(f"needs Pillow's odd test images in {testdata / 'odd_images'}")
    payloads = [path.read_bytes() for path in files]
    pil = make_preprocessor(cpu_transform(tiny_model))
    got = TensorBatchPreprocessor(tiny_model, "cpu")(payloads).per_payload(len(payloads))
    compared = 0
    for path, data, tensor in zip(files, payloads, got):
        try:
            ref = pil(data)
        except ImageDecodeError as exc:
            # Undecodable for one means undecodable for both, with the same reason.
            assert str(tensor) == str(exc), path.name
            continue
        assert tensor.shape == ref.shape == (3, 224, 224), path.name
        diff = (tensor - ref).abs()
        assert diff.mean() < 0.005, (path.name, float(diff.mean()))
        assert diff.max() < 0.5, (path.name, float(diff.max()))
        compared += 1
    assert compared >= 10


def test_single_image_preprocessor_refuses_what_the_pil_path_refuses(tiny_model):
    big = encode(Image.new("RGB", (5000, 4000), "white"))
    pre = make_tensor_preprocessor(tiny_model, "cpu", max_pixels=10_000_000)
    with pytest.raises(ImageDecodeError, match="too large"):
        pre(big)
    with pytest.raises(ImageDecodeError, match="not an image"):
        pre(b"<!DOCTYPE html><html>404</html>")
    with pytest.raises(ImageDecodeError, match="truncated"):
        pre(image_bytes(3, (200, 150))[:-400])
    assert pre(web_photo(40)).shape == (3, 224, 224)


def test_embedder_decode_tensor_equals_pil_rows_and_close_embeddings(tmp_path, tiny_model):
    ckpt = tmp_path / "tiny.pth"
    torch.save(tiny_model.state_dict(), ckpt)
    expected = write_img2dataset(tmp_path / "ds", n_shards=2, rows_per_shard=6, image_size=(300, 200))
    results = {}
    for mode in ("pil", "tensor"):
        ds = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
        emb = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=str(ckpt), batch_size=4,
                                decode=mode)
        results[mode] = emb(ds).metadata.compute(scheduler="sync").sort_values("key").reset_index(drop=True)
    a, b = results["pil"], results["tensor"]
    assert a["key"].tolist() == b["key"].tolist()
    assert a["error"].fillna("").tolist() == b["error"].fillna("").tolist()
    (ea, va), (eb, vb) = embeddings_to_matrix(a["image_embedding"]), embeddings_to_matrix(b["image_embedding"])
    assert (va == vb).all() and va.sum() == sum(e["status"] == "success" for e in expected.values())
    cosine = (ea[va] * eb[vb]).sum(axis=1)
    assert cosine.min() > 0.999, cosine
    with pytest.raises(ValueError, match="decode"):
        TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, decode="nvjpeg")


def test_two_shards_at_a_time_on_the_tensor_path_give_the_rows_of_one_at_a_time(tmp_path, tiny_model):
    """A GPU worker with two threads runs two shards at once through one cached model and batcher
    (one shard reading and decoding while the other's batches are in the model): each row still
    gets its own image's embedding, and batches never mix shards' rows."""
    ckpt = tmp_path / "tiny.pth"
    torch.save(tiny_model.state_dict(), ckpt)
    expected = write_img2dataset(tmp_path / "ds", n_shards=4, rows_per_shard=9, image_size=(200, 150))
    emb = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=str(ckpt), batch_size=4,
                            decode="tensor", num_threads_per_worker=2)
    runs = {}
    for scheduler, workers in (("sync", 1), ("threads", 2)):
        ds = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
        df = emb(ds).metadata.compute(scheduler=scheduler, num_workers=workers)
        runs[scheduler] = df.sort_values("key").reset_index(drop=True)
    a, b = runs["sync"], runs["threads"]
    assert a["error"].fillna("").tolist() == b["error"].fillna("").tolist()
    (ea, va), (eb, vb) = embeddings_to_matrix(a["image_embedding"]), embeddings_to_matrix(b["image_embedding"])
    assert (va == vb).all() and va.sum() == sum(e["status"] == "success" for e in expected.values())
    np.testing.assert_allclose(ea[va], eb[vb], atol=1e-5)


def test_batch_size_default_follows_the_device():
    emb = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS)
    assert emb.batch_size is None and emb.batch_size_on("cuda") == 256 and emb.batch_size_on("cuda:1") == 256
    assert emb.batch_size_on("cpu") == 1
    assert TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, batch_size=8).batch_size_on("cuda") == 8
    with pytest.raises(ValueError, match="batch_size"):
        TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, batch_size=0)


class _GpuMemoryBound(torch.nn.Module):
    """Stands in for a GPU that runs out of memory above 2 images per batch (no GPU here)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 4 * 4, 8)
        self.batch_sizes = []

    def forward(self, x):
        self.batch_sizes.append(len(x))
        if len(x) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated: this machine has no GPU)")
        return self.proj(x.flatten(1))


def test_out_of_memory_batch_is_halved_and_retried_not_lost(caplog):
    torch.manual_seed(0)
    model = _GpuMemoryBound()
    batch = torch.randn(7, 3, 4, 4)
    forward = _make_forward(model, [("s", lambda e: e.sum(dim=1))], "cpu", normalize=True, autocast=False)
    with caplog.at_level(logging.WARNING, logger="nemo_aesthetic"):
        emb, scores = forward(batch)
    expected = torch.nn.functional.normalize(model.proj(batch.flatten(1)), dim=-1).detach().numpy()
    np.testing.assert_allclose(emb, expected, atol=1e-6)
    np.testing.assert_allclose(scores["s"], expected.sum(axis=1), atol=1e-5)
    assert max(n for n in model.batch_sizes if n <= 2) == 2 and "out of GPU memory" in caplog.text
