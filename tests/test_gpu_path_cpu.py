"""The GPU path's cuDF/CuPy and CUDA-only steps, exercised on the CPU (issue 22).

cuDF and CuPy need CUDA to import, so these tests use the fakes in ``fake_rapids`` (only API the
real libraries have, with their refusals); tests/test_gpu.py runs the real thing on a GPU.
"""
import numpy as np
import pytest

import fake_rapids
from nemo_aesthetic import frames


@pytest.fixture
def cudf(monkeypatch):
    fake_rapids.install(monkeypatch)
    import cudf

    return cudf


def test_cudf_embedding_columns_are_built_without_set_axis(cudf):
    """The graph is built with empty columns on cuDF meta (empty_like_with): cuDF has no
    Series.set_axis, so the columns must take their index another way."""
    meta = cudf.DataFrame({"key": cudf.Series([], dtype="str")})
    out = frames.empty_like_with(meta, {"emb": "embedding:4", "any": "embedding:?", "score": "float32"})
    assert list(out.columns) == ["key", "emb", "any", "score"] and len(out) == 0
    partition = cudf.DataFrame({"key": cudf.Series(["a", "b", "c"])}, index=[10, 11, 12])
    series = frames.embeddings_to_series(np.arange(12, dtype=np.float32).reshape(3, 4),
                                         np.array([True, False, True]), partition.index, like=partition)
    assert type(series).__module__ == "cudf"
    assert list(series.index.to_pandas()) == [10, 11, 12]
    host = series.to_pandas()
    assert host[11] is None and list(host[12]) == [8.0, 9.0, 10.0, 11.0]


class _Doubler:
    """A classifier whose model doubles the first embedding value (a real torch computation)."""

    def __new__(cls):
        from nemo_aesthetic.image.classifiers.base import ImageClassifier

        class Doubler(ImageClassifier):
            def load_model(self, device):
                return lambda x: x[:, 0] * 2

        return Doubler("doubler", "emb", "score", embedding_size=4, device="cpu")


def test_classifier_scores_a_cudf_partition_with_a_cupy_validity_mask(cudf):
    """On cuDF, embeddings_to_matrix gives CuPy arrays; CuPy refuses np.asarray, so the classifier
    converts explicitly and rows without an embedding get a null score."""
    import pyarrow as pa

    emb = cudf.Series.from_arrow(pa.array([[1, 0, 0, 0], None, [3, 0, 0, 0]], type=pa.list_(pa.float32())))
    df = cudf.DataFrame({"emb": emb}, index=[5, 6, 7])
    got, valid = frames.embeddings_to_matrix(df["emb"])
    with pytest.raises(TypeError, match="Implicit conversion"):  # the fake refuses as CuPy does
        np.asarray(valid, dtype=bool)
    out = _Doubler()._score_partition(df).to_pandas()
    assert out["score"].iloc[0] == 2.0 and np.isnan(out["score"].iloc[1]) and out["score"].iloc[2] == 6.0


# ------------------------------------------------------------------ the tensor decode path
@pytest.fixture(scope="module")
def tiny_model():
    import timm
    import torch
    from factory import TINY_KWARGS, TINY_MODEL

    torch.manual_seed(0)
    return timm.create_model(TINY_MODEL, pretrained=False, **TINY_KWARGS).eval()


def test_device_decoder_never_writes_while_the_stream_still_reads(tiny_model, monkeypatch):
    """torchvision allocates decode_jpeg's outputs on the calling stream and nvJPEG writes them on its
    own stream: the calling stream's queued kernels (the previous batch's resize) must have finished
    first, or the new pixels land in memory they still read. CUDA's streams are faked here (log of
    calls); tests/test_gpu.py decodes the same batches twice under load on a real GPU."""
    import torch
    import torchvision.io
    from factory import web_photo

    from nemo_aesthetic.image.tensor_preprocess import TensorBatchPreprocessor

    log = []

    class FakeStream:
        def synchronize(self):
            log.append("stream drained")

    real = torchvision.io.decode_jpeg

    def decode(data, *args, **kwargs):
        log.append("device decode")
        return real(data, *args, **kwargs)

    batcher = TensorBatchPreprocessor(tiny_model, "cpu")
    batcher.cuda = True  # take the CUDA ordering path; the kernels themselves run on the CPU
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode)
    for seed in range(3):
        batch = batcher([web_photo(40 + seed, long_side=(300, 400)), web_photo(50 + seed, long_side=(300, 400))])
        assert batch.rows == [0, 1]
    assert log == ["stream drained", "device decode"] * 3


def test_corrupt_jpegs_are_refused_on_the_device_path_as_on_the_cpu_path(tiny_model, monkeypatch):
    """nvJPEG may hand back uninitialised memory for a damaged JPEG whose header parses. With a
    device decoder that does exactly that (never refuses, returns random pixels), every damaged
    image still gets the CPU path's outcome: PIL's reason where PIL refuses, PIL's pixels where
    it decodes (libjpeg's fill for a damaged scan), never the decoder's garbage."""
    import torch
    import torchvision.io
    from factory import corrupt_jpegs, web_photo

    from nemo_aesthetic.image.jpeg_markers import jpeg_header
    from nemo_aesthetic.image.preprocess import ImageDecodeError, cpu_transform, make_preprocessor
    from nemo_aesthetic.image.tensor_preprocess import TensorBatchPreprocessor

    def uninitialised(raws, mode=None, device=None):
        out = []
        for raw in raws:
            header = jpeg_header(raw.numpy().tobytes())
            out.append(torch.randint(0, 256, (1 if mode.name == "GRAY" else 3, header.height, header.width),
                                     dtype=torch.uint8))
        return out

    monkeypatch.setattr(torchvision.io, "decode_jpeg", uninitialised)
    cases = corrupt_jpegs(web_photo(60, long_side=(640, 700)))
    pil = make_preprocessor(cpu_transform(tiny_model))
    results = TensorBatchPreprocessor(tiny_model, "cpu")(list(cases.values())).per_payload(len(cases))
    refused = 0
    for (name, data), ours in zip(cases.items(), results):
        try:
            reference = pil(data)
        except ImageDecodeError as exc:
            refused += 1
            assert isinstance(ours, ImageDecodeError) and str(ours) == str(exc), name
            continue
        assert not isinstance(ours, Exception), (name, ours)
        diff = (ours - reference).abs()  # the tensor path's resize of PIL's pixels, not the fake's noise
        assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.2, (name, float(diff.max()))
    assert refused >= 4  # the corpus holds damage that PIL refuses, not only damage it decodes


def test_one_refused_image_does_not_send_its_batch_one_at_a_time(tiny_model, monkeypatch):
    """nvJPEG refuses a whole batched call for one image it does not take: the rest are still
    decoded in batches (halving), and the refused one goes to PIL."""
    import torchvision.io
    from factory import web_photo

    from nemo_aesthetic.image.tensor_preprocess import TensorBatchPreprocessor

    payloads = [web_photo(70 + i, long_side=(200, 260)) for i in range(17)]
    refused = payloads[5]
    sizes = []
    real = torchvision.io.decode_jpeg

    def decoder_refusing_one(data, *args, **kwargs):  # as nvJPEG: one bad image fails the call
        sizes.append(len(data))
        if any(raw.numpy().tobytes() == refused for raw in data):
            raise RuntimeError("Error while decoding JPEG images: Failed to decode batch: 6")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", decoder_refusing_one)
    batch = TensorBatchPreprocessor(tiny_model, "cpu")(payloads)
    assert batch.rows == list(range(17)) and not batch.failures  # the refused one decoded by PIL
    assert sizes[0] == 17 and len(sizes) <= 2 * 5 + 1  # halving: about 2 log2(17) calls, not 1 + 17
    assert sum(1 for n in sizes if n == 1) <= 2  # only the refused image and its neighbour alone


def test_torchvision_too_old_for_batched_decoding_is_refused_by_name(tiny_model, monkeypatch):
    import configparser
    import pathlib
    import re

    import torchvision

    from nemo_aesthetic.image.tensor_preprocess import MIN_TORCHVISION, TensorBatchPreprocessor, check_torchvision

    assert MIN_TORCHVISION >= (0, 19)  # decode_jpeg(list) arrived in 0.19 (pytorch/vision#8496)
    cfg = configparser.ConfigParser()
    cfg.read(pathlib.Path(__file__).parents[1] / "setup.cfg")
    pin = re.search(r"torchvision>=(\d+)\.(\d+)", cfg["options"]["install_requires"])
    assert pin and (int(pin[1]), int(pin[2])) >= MIN_TORCHVISION  # pip never installs one that fails
    check_torchvision("0.29.1")
    monkeypatch.setattr(torchvision, "__version__", "0.18.1+cu121")
    with pytest.raises(ImportError, match=r"torchvision>=0\.20.*0\.18\.1.*decode='pil'"):
        TensorBatchPreprocessor(tiny_model, "cpu")


# ------------------------------------------------------------------ the engine's batch loop
def test_batch_loop_launches_the_next_forward_before_reading_the_last_one_back():
    """On CUDA the forward's outputs come back asynchronously (pinned copies + an event): the loop
    must launch batch N+1 before it waits for batch N's results, and decode two chunks ahead."""
    import torch

    from nemo_aesthetic.engine import BatchPreprocessor, embed_stream

    log = []

    class Preprocessor(BatchPreprocessor):
        def start(self, payloads):
            log.append(f"decode {payloads[0]}")
            return lambda: [torch.full((2,), float(p)) for p in payloads]

    class Output:
        def __init__(self, batch):
            self.batch = batch
            log.append(f"launch {int(batch[0, 0])}")

        def result(self):
            log.append(f"read {int(self.batch[0, 0])}")
            return self.batch.numpy(), {}

    def forward(batch):  # the synchronous form, unused when launch exists
        raise AssertionError("the loop must launch, not call")

    forward.launch = Output
    with Preprocessor(per_image=None, threads=1) as pre:
        batches = list(embed_stream(((i, i) for i in range(8)), pre, forward, batch_size=2, on_error=None))
    assert [b.tags for b in batches] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert log[:3] == ["decode 0", "decode 2", "decode 4"]  # prefetch: two chunks ahead of the model
    for n in (0, 2, 4):
        assert log.index(f"launch {n + 2}") < log.index(f"read {n}")  # N+1 launched before N is read


def test_device_preparation_runs_batches_on_several_threads_in_order(tiny_model):
    import threading
    import time

    from factory import web_photo

    from nemo_aesthetic.image.tensor_preprocess import DeviceBatchPreprocessor, TensorBatchPreprocessor

    running, most = [0], [0]
    lock = threading.Lock()

    class Slow(TensorBatchPreprocessor):
        def __call__(self, *args, **kwargs):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.3)
            try:
                return super().__call__(*args, **kwargs)
            finally:
                with lock:
                    running[0] -= 1

    payloads = [[web_photo(90 + b, long_side=(200, 260))] for b in range(4)]
    with DeviceBatchPreprocessor(Slow(tiny_model, "cpu"), threads=2, prep_threads=2) as prep:
        waits = [prep.start(p) for p in payloads]
        results = [wait()[0] for wait in waits]
    assert most[0] == 2
    alone = TensorBatchPreprocessor(tiny_model, "cpu")
    for p, got in zip(payloads, results):
        assert torch_equal(got, alone(p).per_payload(1)[0])


def test_pil_pool_on_a_gpu_worker_gets_its_gpus_share_of_the_cores(monkeypatch):
    """Progressive JPEGs (15-25 % of web images) are decoded by PIL: at 3,000 images/s that is
    ~6-15 cores of work (BENCHMARKS.md, host_side.py), so on CUDA the pool is not left at the
    default 4 threads but gets the cores of this GPU's share, less the preparing threads and one."""
    import os

    import torch

    from nemo_aesthetic.image.tensor_preprocess import pil_pool_size

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pil_pool_size(4, 2, cuda=True) == 13  # the lent machine: 16 cores, one H200
    assert pil_pool_size(32, 2, cuda=True) == 32  # asked for more: more
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(112)))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert pil_pool_size(4, 2, cuda=True) == 11  # 8 workers on 112 cores: 14 each
    assert pil_pool_size(4, 2, cuda=False) == 4  # the CPU path: what was asked


def test_pil_payloads_of_a_batch_are_decoded_side_by_side_by_the_pool(tiny_model):
    """The progressive JPEGs of one batch go to the pool's threads at once (each decode made slow on
    purpose, so that running one after the other would show), and come back decoded."""
    import threading
    import time

    from factory import web_photo

    from nemo_aesthetic.image.tensor_preprocess import DeviceBatchPreprocessor, TensorBatchPreprocessor

    running, most = [0], [0]
    lock = threading.Lock()

    class SlowPil(TensorBatchPreprocessor):
        def _pil_decode(self, data):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.3)
            try:
                return super()._pil_decode(data)
            finally:
                with lock:
                    running[0] -= 1

    progressive = [web_photo(40 + i, progressive=True, long_side=(200, 260)) for i in range(4)]
    with DeviceBatchPreprocessor(SlowPil(tiny_model, "cpu"), threads=4, prep_threads=1) as prep:
        assert prep.pil_threads == 4
        out = prep.start(progressive)()
    assert most[0] == 4 and all(not isinstance(x, Exception) for x in out)


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


# ------------------------------------------------------------------ precision modes
def test_pure_bf16_runs_the_whole_model_in_bf16_close_to_fp32(tmp_path):
    """Opt-in pure bf16 (weights and activations, no autocast): the embedder loads bf16 weights and
    its embeddings stay close in direction to the fp32 run on the same images."""
    import timm
    import torch
    from factory import TINY_KWARGS, TINY_MODEL, write_img2dataset

    from nemo_aesthetic.datasets import ImageTextPairDataset
    from nemo_aesthetic.image.embedders import TimmImageEmbedder

    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pth"
    torch.save(timm.create_model(TINY_MODEL, pretrained=False, **TINY_KWARGS).state_dict(), checkpoint)
    root = tmp_path / "ds"
    write_img2dataset(root, n_shards=1, rows_per_shard=8, fail_every=0, image_size=(160, 120))

    def embed(**options):
        emb = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=str(checkpoint),
                                batch_size=3, device="cpu", **options)
        df = emb(ImageTextPairDataset.from_webdataset(str(root))).metadata.compute(scheduler="sync")
        return emb, frames.embeddings_to_matrix(df.sort_values("key")["image_embedding"])

    emb, (pure, valid) = embed(pure_bf16=True)
    _, (fp32, _) = embed()
    assert valid.all()
    assert {p.dtype for p in emb.load_embedding_model("cpu").parameters()} == {torch.bfloat16}
    assert emb.model_cache_key("cpu") != TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS).model_cache_key("cpu")
    cosine = (pure * fp32).sum(1) / np.linalg.norm(pure, axis=1) / np.linalg.norm(fp32, axis=1)
    assert cosine.min() > 0.99 and not np.array_equal(pure, fp32)


def test_differently_sized_images_are_resized_in_batched_products_as_timm_does(tiny_model, monkeypatch):
    """The device path resizes and crops images of many sizes in a few matrix products (no resize
    call per image) and gets timm's transform result up to one 8-bit level; forced on here, where
    the default (on CUDA only) would keep the per-size calls."""
    import torch
    from factory import decode_corpus, web_photo
    from torchvision import transforms as T

    from nemo_aesthetic.image.tensor_preprocess import TensorBatchPreprocessor

    payloads = [web_photo(120 + i, long_side=(200, 500)) for i in range(6)] + list(decode_corpus().values())
    reference = TensorBatchPreprocessor(tiny_model, "cpu", max_pixels=5_000_000)(payloads)
    calls = []
    real = T.Resize.forward
    monkeypatch.setattr(T.Resize, "forward", lambda self, img: calls.append(1) or real(self, img))
    batched = TensorBatchPreprocessor(tiny_model, "cpu", max_pixels=5_000_000, batched_resize=True)
    assert batched.resize_crop is not None
    got = batched(payloads)
    assert calls == []  # every size in the batched products
    assert got.rows == reference.rows and got.failures.keys() == reference.failures.keys()
    one_level = float(batched.scale.max())  # one 8-bit level in normalised units
    diff = (got.images - reference.images).abs()
    assert float(diff.max()) <= one_level * 1.01 and float(diff.mean()) < one_level / 100
