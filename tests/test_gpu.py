"""GPU tests: run where CUDA is available (a lent H100/H200), skipped elsewhere.

Everything here also runs on the CPU in tests/test_tensor_preprocess.py (torchvision's CPU decoder
through the same batched calls); these check what only a GPU shows: nvJPEG's pixels and
refusals against the PIL path, no host synchronisation in our batch code, bf16 weights, the
stream hand-over between the preparing thread and the model, and a LocalCUDACluster.
"""
import numpy as np
import pytest
import torch
from factory import TINY_KWARGS, TINY_MODEL, decode_corpus, image_bytes, web_photo, write_img2dataset

from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.frames import embeddings_to_matrix
from nemo_aesthetic.image.classifiers import AestheticClassifier
from nemo_aesthetic.image.embedders import TimmImageEmbedder

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import timm

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gpu") / "tiny.pth"
    torch.save(timm.create_model(TINY_MODEL, pretrained=False, **TINY_KWARGS).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_model():
    import timm

    torch.manual_seed(0)
    return timm.create_model(TINY_MODEL, pretrained=False, **TINY_KWARGS).eval()


def test_nvjpeg_batch_gives_each_image_the_pil_paths_outcome_and_close_pixels(tiny_model):
    from concurrent.futures import ThreadPoolExecutor

    from nemo_aesthetic.image.preprocess import ImageDecodeError, cpu_transform, make_preprocessor
    from nemo_aesthetic.image.tensor_preprocess import TensorBatchPreprocessor

    cases = decode_corpus()
    pil = make_preprocessor(cpu_transform(tiny_model), max_pixels=5_000_000)
    with ThreadPoolExecutor(2) as pool:
        got = TensorBatchPreprocessor(tiny_model, "cuda", max_pixels=5_000_000)(list(cases.values()), pool)
    results = got.per_payload(len(cases))
    deltas = {}
    for (name, data), ours in zip(cases.items(), results):
        try:
            ref = pil(data)
        except ImageDecodeError as exc:
            assert str(ours) == str(exc), name
            continue
        assert not isinstance(ours, Exception), (name, ours)
        diff = (ours.float().cpu() - ref).abs()
        deltas[name] = (round(float(diff.mean()), 4), round(float(diff.max()), 3))
    print("nvJPEG vs PIL, normalised units (mean, max):", deltas)
    assert len(deltas) == 11
    # nvJPEG's IDCT and chroma upsampling are not libjpeg's: a little more than the CPU decoder's delta.
    assert max(m for m, _ in deltas.values()) < 0.02, deltas
    assert max(x for _, x in deltas.values()) < 1.0, deltas


def test_no_host_synchronisation_inside_a_batch(tiny_model):
    """Our batch code (PIL upload, grouping, resize, crop, normalise) never makes the host wait for
    the device: CUDA's sync debug mode raises on any synchronising call."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from nemo_aesthetic.image.tensor_preprocess import TensorBatchPreprocessor

    batcher = TensorBatchPreprocessor(tiny_model, "cuda")
    jpegs = [web_photo(i) for i in range(6)] + [web_photo(0)]
    raws = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    decoded = dict(enumerate(decode_jpeg(raws, mode=ImageReadMode.RGB, device="cuda")))
    pngs = [image_bytes(i, (320, 240), fmt="PNG") for i in range(3)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch, rows = batcher._transform(decoded, {}, torch.bfloat16)
        from_pil = batcher(pngs)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert batch.shape == (7, 3, 224, 224) and batch.dtype == torch.bfloat16 and rows == list(range(7))
    assert from_pil.images.shape == (3, 3, 224, 224) and from_pil.images.device.type == "cuda"


def test_weights_are_cast_to_bf16_once(ckpt):
    emb = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=ckpt)
    model = emb.load_embedding_model("cuda")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    exact = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=ckpt, autocast=False)
    assert {p.dtype for p in exact.load_embedding_model("cuda").parameters()} == {torch.float32}
    assert emb.model_cache_key("cuda") != exact.model_cache_key("cuda")
    assert emb.batch_size_on("cuda") == 256


def _run(root, ckpt, weights, **kw):
    ds = ImageTextPairDataset.from_webdataset(str(root))
    emb = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=ckpt, batch_size=8,
                            classifiers=[AestheticClassifier(model_path=weights)], **kw)
    return emb(ds).metadata.compute(scheduler="sync").sort_values("key").reset_index(drop=True)


def test_cuda_nvjpeg_bf16_matches_cpu_reference(tmp_path, ckpt, aesthetic_weights):
    """The whole GPU path (shards read ahead, batches decoded by nvJPEG on a side stream while the
    previous batch is in the model, bf16 weights) against the CPU reference path, by key."""
    write_img2dataset(tmp_path / "ds", n_shards=3, rows_per_shard=40, image_size=(320, 240))
    cpu = _run(tmp_path / "ds", ckpt, aesthetic_weights, device="cpu", decode="pil", autocast=False)
    gpu = _run(tmp_path / "ds", ckpt, aesthetic_weights, device="cuda")  # nvJPEG + bf16 weights + autocast
    assert cpu["error"].fillna("").tolist() == gpu["error"].fillna("").tolist()
    delta = (cpu["aesthetic_score"] - gpu["aesthetic_score"]).abs().dropna()
    assert len(delta) == 90
    assert delta.mean() < 0.05 and delta.max() < 0.2, delta.describe()
    (a, va), (b, vb) = embeddings_to_matrix(cpu["image_embedding"]), embeddings_to_matrix(gpu["image_embedding"])
    assert ((a[va] * b[vb]).sum(axis=1) > 0.99).all()


def test_cudf_backend_partitions(tmp_path, ckpt, aesthetic_weights):
    cudf = pytest.importorskip("cudf")
    import dask

    write_img2dataset(tmp_path / "ds", n_shards=2, rows_per_shard=6)
    with dask.config.set({"dataframe.backend": "cudf"}):
        ds = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
        assert isinstance(ds.metadata._meta, cudf.DataFrame)
        emb = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=ckpt, batch_size=4,
                                classifiers=[AestheticClassifier(model_path=aesthetic_weights)], device="cuda")
        out = emb(ds)
        df = out.metadata.compute(scheduler="sync")
        assert isinstance(df, cudf.DataFrame) and len(df) == 12
        out.save_metadata(str(tmp_path / "meta"))
        again = AestheticClassifier(model_path=aesthetic_weights)(
            ImageTextPairDataset.from_webdataset(str(tmp_path / "meta"))).metadata.compute(scheduler="sync")
    np.testing.assert_allclose(again["aesthetic_score"].to_pandas().to_numpy(float),
                               df["aesthetic_score"].to_pandas().to_numpy(float), atol=1e-4, equal_nan=True)


def test_local_cuda_cluster(tmp_path):
    pytest.importorskip("dask_cuda")
    from nemo_aesthetic import get_client

    with get_client(cluster_type="gpu", threads_per_worker=2) as client:
        workers = client.scheduler_info()["workers"].values()
        assert len(workers) == torch.cuda.device_count()
        assert {w["nthreads"] for w in workers} == {2}


def test_batches_prepared_while_the_device_is_busy_equal_batches_prepared_alone(tiny_model):
    """nvJPEG writes on its own stream into memory allocated on the preparing stream: decoding the
    same batches again, pipelined with other batches and a busy model stream, must give identical
    tensors (memory still being read would show as corrupted pixels)."""
    from nemo_aesthetic.image.tensor_preprocess import DeviceBatchPreprocessor, TensorBatchPreprocessor

    batcher = TensorBatchPreprocessor(tiny_model, "cuda")
    batches = [[web_photo(100 + 8 * b + i) for i in range(8)] for b in range(6)]
    alone = []
    for payloads in batches:
        alone.append(torch.stack(batcher(payloads).per_payload(len(payloads))).cpu())
        torch.cuda.synchronize()
    load = torch.randn(4096, 4096, device="cuda")
    with DeviceBatchPreprocessor(batcher, threads=4, prep_threads=3) as prep:
        for _ in range(3):
            waits = [prep.start(p) for p in batches]
            for wait, expected in zip(waits, alone):
                for _ in range(4):
                    load = load @ load.T / 4096  # keep the model's stream busy
                got = torch.stack(wait()).cpu()
                assert torch.equal(got, expected)
    torch.cuda.synchronize()


def test_corrupt_jpegs_get_the_cpu_paths_outcome_on_nvjpeg(tiny_model):
    from factory import corrupt_jpegs

    from nemo_aesthetic.image.preprocess import ImageDecodeError, cpu_transform, make_preprocessor
    from nemo_aesthetic.image.tensor_preprocess import TensorBatchPreprocessor

    cases = corrupt_jpegs(web_photo(60, long_side=(640, 700)))
    pil = make_preprocessor(cpu_transform(tiny_model))
    results = TensorBatchPreprocessor(tiny_model, "cuda")(list(cases.values())).per_payload(len(cases))
    for (name, data), ours in zip(cases.items(), results):
        try:
            reference = pil(data)
        except ImageDecodeError as exc:
            assert isinstance(ours, ImageDecodeError) and str(ours) == str(exc), name
            continue
        assert float((ours.float().cpu() - reference).abs().mean()) < 0.02, name


def test_forward_launch_does_not_wait_for_the_device(tiny_model):
    """The batch loop launches batch N+1 before reading batch N back: launching must not make the
    host wait for the GPU (CUDA's sync debug mode raises on any synchronising call)."""
    from nemo_aesthetic.engine import make_forward

    model = tiny_model.to("cuda")
    forward = make_forward(model, [("s", lambda e: e.sum(1))], "cuda")
    batch = torch.randn(8, 3, 224, 224, device="cuda")
    forward.launch(batch).result()  # warm-up (cuDNN/cuBLAS handles)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pending = forward.launch(batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    embeddings, scores = pending.result()
    assert embeddings.shape[0] == 8 and scores["s"].shape == (8,)


def test_batched_resize_on_cuda_matches_the_per_size_transforms(tiny_model):
    from nemo_aesthetic.image.tensor_preprocess import TensorBatchPreprocessor

    payloads = [web_photo(130 + i) for i in range(16)]
    batched = TensorBatchPreprocessor(tiny_model, "cuda")
    assert batched.resize_crop is not None  # the default on CUDA
    got = batched(payloads)
    reference = TensorBatchPreprocessor(tiny_model, "cuda", batched_resize=False)(payloads)
    assert got.rows == reference.rows
    diff = (got.images.float() - reference.images.float()).abs()
    assert float(diff.max()) <= float(batched.scale.max()) * 1.01  # at most one 8-bit level
