"""LAION-Aesthetics V1 heads: the real ``sa_0_4_vit_*_linear.pth`` files from ../shared/models/laion-v1,
scored against a plain ``nn.Linear`` reference, following the embedder's backbone in both fronts,
downloaded and sha256-verified like the v2 weights (from an HTTP server on 127.0.0.1)."""
from __future__ import annotations

import functools
import http.server
import shutil
import threading

import dask
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SHARED, needs_shared, skip_without_shared
from factory import write_img2dataset

from nemo_aesthetic import frames
from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.image.classifiers import AestheticClassifier
from nemo_aesthetic.image.classifiers.aesthetic import resolve_head
from nemo_aesthetic.image.embedders import TimmImageEmbedder
from nemo_aesthetic.weights import AESTHETIC_V1_WEIGHTS, MIRROR_ENV, WeightsUnavailableError, sha256_of

V1_DIR = SHARED / "models" / "laion-v1"
pytestmark = needs_shared(V1_DIR, "the real LAION-Aesthetics V1 weights")
TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "global_pool": "avg"}
BACKBONES = {  # timm model -> (concrete head, weights key, width)
    "vit_large_patch14_clip_224.openai": ("v1-l14", "vit_l_14", 768),
    "vit_base_patch16_clip_224.openai": ("v1-b16", "vit_b_16", 512),
    "vit_base_patch32_clip_224.openai": ("v1-b32", "vit_b_32", 512),
}


@pytest.fixture(scope="module")
def v1_dir():
    for spec in AESTHETIC_V1_WEIGHTS.values():
        skip_without_shared(V1_DIR / spec.filename, "the LAION-Aesthetics V1 heads (LAION-AI/aesthetic-predictor)")
    return V1_DIR


def reference_scores(path, x: np.ndarray) -> np.ndarray:
    """Upstream's own model: ``nn.Linear(d, 1)`` with the state dict, applied in float64."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    linear = torch.nn.Linear(x.shape[1], 1).double()
    linear.load_state_dict({k: v.double() for k, v in state.items()})
    with torch.inference_mode():
        return linear(torch.as_tensor(x, dtype=torch.float64)).numpy().reshape(-1)


def unit_vectors(n, dim, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_checksums_in_the_registry_are_the_real_files(v1_dir):
    sums = dict(line.split()[::-1] for line in (v1_dir / "SHA256SUMS").read_text().splitlines() if line.strip())
    for spec in AESTHETIC_V1_WEIGHTS.values():
        assert spec.sha256 == sums[spec.filename] == sha256_of(str(v1_dir / spec.filename))
        assert spec.url == f"https://github.com/LAION-AI/aesthetic-predictor/blob/main/{spec.filename}?raw=true"


@pytest.mark.parametrize("model_name", sorted(BACKBONES))
def test_each_v1_head_equals_the_linear_reference(v1_dir, model_name):
    head, key, dim = BACKBONES[model_name]
    path = v1_dir / AESTHETIC_V1_WEIGHTS[key].filename
    x = unit_vectors(300, dim, seed=dim)
    clf = AestheticClassifier(head=head, model_path=str(path))
    assert clf.embedding_size == dim
    with torch.inference_mode():
        ours = clf.load_model("cpu")(torch.as_tensor(x)).numpy()
    expected = reference_scores(path, x)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)
    assert expected.std() > 0.01  # the vectors tell the heads apart: not a constant that happens to match
    assert resolve_head("v1", model_name) == head


def test_heads_differ_and_unknown_heads_are_refused(v1_dir):
    x = unit_vectors(50, 512)
    b16 = reference_scores(v1_dir / AESTHETIC_V1_WEIGHTS["vit_b_16"].filename, x)
    b32 = reference_scores(v1_dir / AESTHETIC_V1_WEIGHTS["vit_b_32"].filename, x)
    assert np.abs(b16 - b32).max() > 0.1
    with pytest.raises(ValueError, match="head must be one of"):
        AestheticClassifier(head="v3")
    with pytest.raises(ValueError, match="v1-b16, v1-b32"):
        resolve_head("v1", "vit_small_patch16_224.augreg_in21k")


def test_v1_head_downloads_into_the_cache_verified(v1_dir, tmp_path, monkeypatch):
    www = tmp_path / "www"
    www.mkdir()
    spec = AESTHETIC_V1_WEIGHTS["vit_b_32"]
    shutil.copyfile(v1_dir / spec.filename, www / spec.filename)
    (www / AESTHETIC_V1_WEIGHTS["vit_b_16"].filename).write_bytes(b"not the weights")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.delenv("NEMO_AESTHETIC_OFFLINE")
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{server.server_address[1]}")
        clf = AestheticClassifier(head="v1-b32")
        assert clf.model_path.startswith(str(tmp_path / "nemo_home")) and sha256_of(clf.model_path) == spec.sha256
        with pytest.raises(WeightsUnavailableError, match="sha256"):
            AestheticClassifier(head="v1-b16")  # wrong bytes: refused, nothing cached
        assert not (tmp_path / "nemo_home" / AESTHETIC_V1_WEIGHTS["vit_b_16"].filename).exists()
    finally:
        server.shutdown()
        server.server_close()


def _tiny_checkpoint(tmp_path, model_name):
    import timm

    torch.manual_seed(7)
    path = tmp_path / f"{model_name}.pth"
    torch.save(timm.create_model(model_name, pretrained=False, **TINY).state_dict(), path)
    return str(path)


@pytest.mark.parametrize("model_name", sorted(BACKBONES))
def test_head_follows_the_embedders_backbone_end_to_end(v1_dir, tmp_path, monkeypatch, model_name):
    head, key, dim = BACKBONES[model_name]
    monkeypatch.setenv("NEMO_AESTHETIC_HOME", str(v1_dir))  # the cache holds the real V1 files
    root = tmp_path / "ds"
    write_img2dataset(root, n_shards=2, rows_per_shard=5)
    clf = AestheticClassifier(head="v1")
    embedder = TimmImageEmbedder(model_name, model_kwargs=TINY, checkpoint_path=_tiny_checkpoint(tmp_path, model_name),
                                 batch_size=4, num_threads_per_worker=1, classifiers=[clf])
    with dask.config.set(scheduler="synchronous"):
        df = embedder(ImageTextPairDataset.from_webdataset(str(root))).metadata.compute()
    assert clf.concrete_head == head and clf.model_path == str(v1_dir / AESTHETIC_V1_WEIGHTS[key].filename)
    matrix, valid = frames.embeddings_to_matrix(df["image_embedding"])
    assert matrix.shape[1] == dim and valid.sum() >= 6
    expected = reference_scores(clf.model_path, matrix[valid])
    np.testing.assert_allclose(df["aesthetic_score"].to_numpy(float)[valid], expected, rtol=0, atol=1e-5)


def test_width_mismatch_is_an_error_before_any_work(v1_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NEMO_AESTHETIC_HOME", str(v1_dir))
    root = tmp_path / "ds"
    write_img2dataset(root, n_shards=1, rows_per_shard=3)
    ds = ImageTextPairDataset.from_webdataset(str(root))
    embedder = TimmImageEmbedder("vit_large_patch14_clip_224.openai", model_kwargs=TINY,
                                 classifiers=[AestheticClassifier(head="v1-b32")])
    with pytest.raises(ValueError, match="512-d embeddings .*OpenAI CLIP ViT-B/32.* gives 768-d"):
        embedder(ds)
    # Standalone on 512-d embeddings, "v1" means ViT-L/14: the error says which heads take 512-d.
    emb = tmp_path / "emb"
    emb.mkdir()
    table = pa.table({"key": ["a", "b"], "image_embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(unit_vectors(2, 512).reshape(-1)), 512)})
    pq.write_table(table, emb / "00000.parquet")
    with pytest.raises(ValueError, match="head='v1-b16' or head='v1-b32'"):
        AestheticClassifier(head="v1")(ImageTextPairDataset.from_webdataset(str(emb)))


def test_stage_front_follows_the_embedding_stage(v1_dir, tmp_path, cpu_client):
    from nemo_aesthetic.pipeline import Pipeline
    from nemo_aesthetic.stages.file_partitioning import FilePartitioningStage
    from nemo_aesthetic.stages.image.embedders.clip_embedder import ImageEmbeddingStage
    from nemo_aesthetic.stages.image.filters.aesthetic_filter import ImageAestheticFilterStage
    from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage

    model = "vit_base_patch32_clip_224.openai"
    root = tmp_path / "ds"
    write_img2dataset(root, n_shards=2, rows_per_shard=4)
    embedding = ImageEmbeddingStage(model_name=model, model_kwargs=TINY, checkpoint_path=_tiny_checkpoint(tmp_path, model),
                                    model_inference_batch_size=4)
    scoring = ImageAestheticFilterStage(model_dir=str(v1_dir), score_threshold=-np.inf, head="v1")
    results = Pipeline("v1", stages=[FilePartitioningStage(str(root), file_extensions=[".tar"]),
                                     ImageReaderStage(batch_size=4, num_threads=1), embedding, scoring]
                       ).run(executor=cpu_client)
    images = [im for batch in results for im in batch.data]
    assert scoring.concrete_head == "v1-b32" and len(images) >= 5
    x = np.stack([im.embedding for im in images])
    expected = reference_scores(v1_dir / AESTHETIC_V1_WEIGHTS["vit_b_32"].filename, x)
    np.testing.assert_allclose([im.aesthetic_score for im in images], expected, rtol=0, atol=1e-5)

    # A head of the wrong width fails when the pipeline starts, before any partition runs.
    wrong = ImageAestheticFilterStage(model_dir=str(v1_dir), head="v1-l14")
    with pytest.raises(ValueError, match="768-d embeddings .* gives 512-d"):
        Pipeline("bad", stages=[FilePartitioningStage(str(root)), ImageReaderStage(), embedding, wrong]).run(
            executor=cpu_client)
