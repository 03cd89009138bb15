"""TimmImageEmbedder (+ fused AestheticClassifier) through Dask equals a direct computation.

The direct computation is the reference pipeline written out by hand: PIL open -> RGB -> timm's
transform for the model's config -> forward -> L2-normalise -> the unfolded upstream MLP. Rows are
compared BY KEY, so a result written into the wrong row fails even if the multiset of values is
right. Tiny models are always loaded from a checkpoint the test saved: a randomly initialised
model would differ between worker processes.
"""
from __future__ import annotations

import io
import logging
import os
import tarfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from factory import (TINY_KWARGS, TINY_MODEL, add_member, image_bytes, model_loads, tar_members,
                     write_img2dataset)
from PIL import Image

from nemo_aesthetic import distributed, frames
from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.image.classifiers import AestheticClassifier
from nemo_aesthetic.image.classifiers.aesthetic import load_upstream
from nemo_aesthetic.image.embedders import TimmImageEmbedder

ATOL = 1e-4


# --------------------------------------------------------------------------- references


class Direct:
    """The reference computation, one image at a time, no Dask, no library code on the image path."""

    def __init__(self, checkpoint: str, weights: str):
        import timm
        import timm.data

        self.model = timm.create_model(TINY_MODEL, pretrained=False, **TINY_KWARGS)
        self.model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        self.model.eval()
        config = timm.data.resolve_data_config({}, model=self.model)
        self.transform = timm.data.create_transform(**config, is_training=False)
        self.mlp = load_upstream(weights)

    def __call__(self, data: bytes):
        """``(embedding (768,), score)`` or None if PIL cannot decode the bytes."""
        try:
            image = Image.open(io.BytesIO(data)).convert("RGB")
        except Exception:
            return None
        with torch.inference_mode():
            x = self.transform(image).unsqueeze(0)
            emb = torch.nn.functional.normalize(self.model(x), dim=-1)
            score = self.mlp(emb)
        return emb[0].numpy(), float(score[0, 0])


@pytest.fixture(scope="module")
def direct(tiny_checkpoint, aesthetic_weights):
    return Direct(tiny_checkpoint, aesthetic_weights)


def embedder(checkpoint, weights, **kwargs):
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("num_threads_per_worker", 2)
    return TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=checkpoint,
                             classifiers=[AestheticClassifier(model_path=weights)], **kwargs)


def run(emb, path, scheduler="sync"):
    ds = ImageTextPairDataset.from_webdataset(str(path))
    return emb(ds).metadata.compute(scheduler=scheduler)


def assert_rows_match(df: pd.DataFrame, images: dict, direct, atol=ATOL):
    """Each key with image bytes: embedding and score as computed directly; other keys: null."""
    by_key = df.set_index("key")
    matrix, valid = frames.embeddings_to_matrix(by_key["image_embedding"])
    position = {k: i for i, k in enumerate(by_key.index)}
    for key, data in images.items():
        i = position[key]
        ref = direct(data) if data is not None else None
        if ref is None:
            assert not valid[i], key
            assert np.isnan(by_key["aesthetic_score"].iloc[i]), key
            assert isinstance(by_key["error"].iloc[i], str) and by_key["error"].iloc[i], key
            continue
        assert valid[i], (key, by_key["error"].iloc[i])
        assert pd.isna(by_key["error"].iloc[i]), key
        np.testing.assert_allclose(matrix[i], ref[0], rtol=0, atol=atol, err_msg=key)
        assert by_key["aesthetic_score"].iloc[i] == pytest.approx(ref[1], abs=atol), key
        assert np.linalg.norm(matrix[i]) == pytest.approx(1.0, abs=1e-5)


def _images(expected: dict) -> dict:
    return {k: v["image"] for k, v in expected.items()}


# --------------------------------------------------------------------------- fidelity
def test_sync_equals_direct_computation_by_key(img2dataset_dir, tiny_checkpoint, aesthetic_weights, direct):
    root, expected = img2dataset_dir
    df = run(embedder(tiny_checkpoint, aesthetic_weights), root)
    assert len(df) == len(expected)
    assert df["image_embedding"].dtype == frames.embedding_dtype(768)
    assert_rows_match(df, _images(expected), direct)
    failed = df[df.status != "success"]
    assert len(failed) and failed["error"].str.contains("img2dataset status failed_to_download").all()
    assert failed["error"].str.contains("404").all()
    # Different images get different embeddings (a constant output would also "match" nothing).
    m, v = frames.embeddings_to_matrix(df["image_embedding"])
    assert np.unique(m[v].round(5), axis=0).shape[0] == v.sum()


def test_distributed_equals_direct_computation_by_key(img2dataset_dir, tiny_checkpoint, aesthetic_weights,
                                                     direct, cpu_client):
    root, expected = img2dataset_dir
    ds = ImageTextPairDataset.from_webdataset(str(root))
    df = cpu_client.compute(embedder(tiny_checkpoint, aesthetic_weights)(ds).metadata).result()
    assert len(df) == len(expected)
    assert_rows_match(df, _images(expected), direct)


def test_model_is_loaded_once_per_worker(tmp_path, tiny_checkpoint, aesthetic_weights, cpu_client):
    write_img2dataset(tmp_path / "ds", n_shards=6, rows_per_shard=4, fail_every=0)
    # A checkpoint path of its own: the cache key is new, whatever ran on these workers before.
    checkpoint = tmp_path / "own.pth"
    checkpoint.write_bytes(open(tiny_checkpoint, "rb").read())
    emb = embedder(str(checkpoint), aesthetic_weights, batch_size=2)
    model_key = emb.model_cache_key("cpu")
    clf_key = emb.classifiers[0].cache_key("cpu")
    ds = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))

    first = cpu_client.compute(emb(ds).metadata).result()
    after_first = model_loads(cpu_client)
    second = cpu_client.compute(emb(ds).metadata).result()
    after_second = model_loads(cpu_client)

    assert first["aesthetic_score"].notna().all()
    pd.testing.assert_frame_equal(first, second)
    loads = {w: n for (w, key), n in after_second.items() if key == model_key}
    # 6 partitions on 2 single-threaded workers: at least one worker ran several of them.
    assert sum(loads.values()) >= 1
    assert all(n <= 1 for n in loads.values()), loads
    assert after_first == after_second  # second call: no reload
    assert all(n <= 1 for (w, key), n in after_second.items() if key == clf_key)
    held = cpu_client.run(distributed.cached_keys)
    assert all(model_key in held[w] for w in loads), held  # the loaded model stays cached
    assert sum(n for (w, key), n in after_second.items() if key == clf_key) >= 1


# --------------------------------------------------------------------------- loading weights
def test_hf_cache_route_equals_checkpoint_route(tmp_path, monkeypatch, img2dataset_dir, tiny_checkpoint,
                                                aesthetic_weights):
    """pretrained=True resolves through timm's hub loading, offline, from a pre-populated HF cache."""
    import huggingface_hub.constants
    import safetensors.torch
    import timm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        # huggingface_hub reads HF_HUB_OFFLINE once, at import; if it was imported before the
        # variable was set in this process, apply the variable's documented effect.
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model_name = "vit_large_patch14_clip_quickgelu_224.openai"
    probe = timm.create_model(model_name, pretrained=False, **TINY_KWARGS)
    hub_id = probe.pretrained_cfg["hf_hub_id"]
    assert hub_id == "timm/vit_large_patch14_clip_224.openai"

    cache = tmp_path / "hf_cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()},
                                str(repo / "snapshots" / commit / "model.safetensors"))

    root, expected = img2dataset_dir
    hub = TimmImageEmbedder(model_name, pretrained=True, model_kwargs=TINY_KWARGS, cache_dir=str(cache),
                            batch_size=4, classifiers=[AestheticClassifier(model_path=aesthetic_weights)])
    from_hub = run(hub, root).set_index("key")
    from_file = run(embedder(tiny_checkpoint, aesthetic_weights), root).set_index("key").loc[from_hub.index]
    a, va = frames.embeddings_to_matrix(from_hub["image_embedding"])
    b, vb = frames.embeddings_to_matrix(from_file["image_embedding"])
    assert va.sum() == sum(e["status"] == "success" for e in expected.values())
    np.testing.assert_array_equal(va, vb)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(from_hub["aesthetic_score"], from_file["aesthetic_score"], rtol=0, atol=1e-6)


def test_pretrained_offline_without_cache_fails_clearly(tmp_path, img2dataset_dir, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    root, _ = img2dataset_dir
    emb = TimmImageEmbedder("vit_large_patch14_clip_quickgelu_224.openai", pretrained=True,
                            model_kwargs=TINY_KWARGS, cache_dir=str(tmp_path / "empty_cache"))
    # Raised before any row is written, saying what was looked for where and what else to do.
    with pytest.raises(RuntimeError) as info:
        run(emb, root)
    message = str(info.value)
    assert "timm/vit_large_patch14_clip_224.openai" in message and str(tmp_path / "empty_cache") in message
    assert "checkpoint_path" in message and "HF_HUB_OFFLINE" in message


def test_unknown_model_name_fails_at_construction():
    with pytest.raises(ValueError, match="vit_nonexistent_patch99"):
        TimmImageEmbedder("vit_nonexistent_patch99")


def test_classifier_width_mismatch_fails_at_call_before_any_work(img2dataset_dir, aesthetic_weights):
    root, _ = img2dataset_dir
    ds = ImageTextPairDataset.from_webdataset(str(root))
    before = distributed.cached_keys()
    emb = TimmImageEmbedder(TINY_MODEL, model_kwargs={**TINY_KWARGS, "num_classes": 16},
                            classifiers=[AestheticClassifier(model_path=aesthetic_weights)])
    assert emb.embedding_dim == 16
    with pytest.raises(ValueError, match=r"768-d.*16-d"):
        emb(ds)
    assert distributed.cached_keys() == before  # no model was loaded


def test_embedding_width_without_classifier_follows_the_model(img2dataset_dir):
    root, expected = img2dataset_dir
    emb = TimmImageEmbedder(TINY_MODEL, model_kwargs={**TINY_KWARGS, "num_classes": 0})
    assert emb.embedding_dim == 32
    df = run(emb, root)
    assert df["image_embedding"].dtype == frames.embedding_dtype(32)
    m, v = frames.embeddings_to_matrix(df["image_embedding"])
    assert m.shape == (len(expected), 32)
    assert v.sum() == sum(e["status"] == "success" for e in expected.values())


# --------------------------------------------------------------------------- batching
@pytest.mark.parametrize("batch_size", [1, 64])
def test_batch_size_does_not_change_results(img2dataset_dir, tiny_checkpoint, aesthetic_weights, direct,
                                            batch_size):
    root, expected = img2dataset_dir  # 10 rows per shard: 64 is larger than any shard
    df = run(embedder(tiny_checkpoint, aesthetic_weights, batch_size=batch_size, num_threads_per_worker=3), root)
    assert_rows_match(df, _images(expected), direct)


# --------------------------------------------------------------------------- odd shards
def _rewrite_tar(path, extra=(), drop=(), key_map=None):
    """Rewrite a tar keeping member order: ``extra`` (name, bytes) appended, ``drop`` keys removed."""
    members = tar_members(path)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            key = name.split(".", 1)[0]
            if key in drop:
                continue
            add_member(tar, name, data)
        for name, data in extra:
            add_member(tar, name, data)


def test_empty_shard_parquet_and_tar(img2dataset_dir, tiny_checkpoint, aesthetic_weights, direct):
    root, expected = img2dataset_dir
    empty = pd.read_parquet(root / "00001.parquet").iloc[:0]
    empty.to_parquet(root / "00001.parquet", index=False)
    with tarfile.open(root / "00001.tar", "w"):
        pass
    df = run(embedder(tiny_checkpoint, aesthetic_weights), root)
    kept = {k: v for k, v in expected.items() if v["shard"] != "00001"}
    assert sorted(df.key) == sorted(kept)
    assert_rows_match(df, _images(kept), direct)


def test_shard_where_every_row_failed(img2dataset_dir, tiny_checkpoint, aesthetic_weights, direct):
    root, expected = img2dataset_dir
    meta = pd.read_parquet(root / "00002.parquet")
    meta["status"] = "failed_to_download"
    meta["error_message"] = "<urlopen error [Errno 111] Connection refused>"
    meta.to_parquet(root / "00002.parquet", index=False)
    with tarfile.open(root / "00002.tar", "w"):
        pass
    df = run(embedder(tiny_checkpoint, aesthetic_weights), root)
    assert len(df) == len(expected)
    failed = df[df.key.str.startswith("00002")]
    assert len(failed) == 10
    assert failed["aesthetic_score"].isna().all()
    assert failed["image_embedding"].isna().all()
    assert failed["error"].str.contains("failed_to_download").all()
    assert failed["error"].str.contains("Connection refused").all()
    assert_rows_match(df, {k: v["image"] for k, v in expected.items() if v["shard"] != "00002"}, direct)


def test_parquet_without_its_tar_flags_rows(img2dataset_dir, tiny_checkpoint, aesthetic_weights, direct):
    root, expected = img2dataset_dir
    os.remove(root / "00001.tar")
    df = run(embedder(tiny_checkpoint, aesthetic_weights), root)
    assert len(df) == len(expected)
    orphaned = df[df.key.str.startswith("00001")]
    assert orphaned["aesthetic_score"].isna().all()
    downloaded = orphaned.status == "success"
    assert orphaned.loc[downloaded, "error"].str.contains("shard 00001 has no tar").all()
    # rows img2dataset never downloaded keep img2dataset's own reason
    assert orphaned.loc[~downloaded, "error"].str.contains("img2dataset status failed_to_download").all()
    assert_rows_match(df, {k: v["image"] for k, v in expected.items() if v["shard"] != "00001"}, direct)


def test_tar_sample_without_metadata_row_is_counted_not_scored(img2dataset_dir, tiny_checkpoint,
                                                               aesthetic_weights, direct, caplog):
    root, expected = img2dataset_dir
    # A stray sample whose key sorts among the real ones, with a picture unlike any of them.
    stray = image_bytes(999, (80, 80))
    _rewrite_tar(root / "00000.tar", extra=[("000000002x.jpg", stray), ("000000002x.txt", b"stray")])
    # and one that would land at a real row's position if anything matched by position
    meta = pd.read_parquet(root / "00000.parquet")
    lost = next(k for k in sorted(meta.key) if expected[k]["status"] == "success" and k > "000000002")
    meta = meta[meta.key != lost]
    meta.to_parquet(root / "00000.parquet", index=False)
    with caplog.at_level(logging.WARNING, logger="nemo_aesthetic"):
        df = run(embedder(tiny_checkpoint, aesthetic_weights), root)
    assert len(df) == len(expected) - 1
    assert "000000002x" not in set(df.key) and lost not in set(df.key)
    assert_rows_match(df, {k: v["image"] for k, v in expected.items() if k != lost}, direct)
    warnings = [r.getMessage() for r in caplog.records if "no metadata row" in r.getMessage()]
    assert any("shard 00000: 2 tar sample(s)" in w for w in warnings), warnings
    assert any("000000002x" in w for w in warnings)


def test_rows_with_null_id_are_flagged(img2dataset_dir, tiny_checkpoint, aesthetic_weights, direct):
    root, expected = img2dataset_dir
    meta = pd.read_parquet(root / "00001.parquet")
    victim = next(k for k in sorted(meta.key) if expected[k]["status"] == "success")
    meta["key"] = meta["key"].where(meta.key != victim, None)
    meta.to_parquet(root / "00001.parquet", index=False)
    df = run(embedder(tiny_checkpoint, aesthetic_weights), root)
    assert len(df) == len(expected)
    null_rows = df[df.key.isna()]
    assert len(null_rows) == 1
    assert null_rows["aesthetic_score"].isna().all()
    assert null_rows["error"].str.contains("missing id").all()
    assert null_rows["caption"].iloc[0] == f"caption {victim}"  # the row kept its metadata
    assert_rows_match(df.dropna(subset=["key"]),
                      {k: v["image"] for k, v in expected.items() if k != victim}, direct)


def test_duplicate_key_in_tar_flags_the_row(img2dataset_dir, tiny_checkpoint, aesthetic_weights, direct):
    root, expected = img2dataset_dir
    dup = next(k for k in sorted(expected) if expected[k]["shard"] == "00002" and expected[k]["status"] == "success")
    _rewrite_tar(root / "00002.tar", extra=[(f"{dup}.jpg", image_bytes(4242)), (f"{dup}.txt", b"again")])
    df = run(embedder(tiny_checkpoint, aesthetic_weights), root)
    row = df.set_index("key").loc[dup]
    assert pd.isna(row["aesthetic_score"])
    assert "duplicate" in row["error"]
    assert_rows_match(df, {k: v["image"] for k, v in expected.items() if k != dup}, direct)


def test_undecodable_images_are_flagged_with_a_reason(img2dataset_dir, tiny_checkpoint, aesthetic_weights, direct):
    root, expected = img2dataset_dir
    meta = pd.read_parquet(root / "00000.parquet")
    ok = [k for k in sorted(meta.key) if expected[k]["status"] == "success"]
    html, empty = ok[0], ok[1]
    members = tar_members(root / "00000.tar")
    with tarfile.open(root / "00000.tar", "w") as tar:
        for name, data in members:
            if name == f"{html}.jpg":
                data = b"<!doctype html><html>403 Forbidden</html>"
            elif name == f"{empty}.jpg":
                data = b""
            add_member(tar, name, data)
    df = run(embedder(tiny_checkpoint, aesthetic_weights), root).set_index("key")
    assert "not an image" in df.loc[html, "error"]
    assert "0 bytes" in df.loc[empty, "error"]
    images = {k: v["image"] for k, v in expected.items() if k not in (html, empty)}
    assert_rows_match(df.reset_index(), images, direct)


# --------------------------------------------------------------------------- real img2dataset output
@pytest.mark.parametrize("variant", ["disable_all_reencoding", "resize_keep_ratio_256", "resize_no_skip_reencode"])
def test_real_img2dataset_output(testdata, variant, tiny_checkpoint, aesthetic_weights, direct):
    path = testdata / "img2dataset_output" / variant
    df = run(embedder(tiny_checkpoint, aesthetic_weights), path)
    metas = [pd.read_parquet(p) for p in sorted(path.glob("*.parquet"))]
    assert len(df) == sum(len(m) for m in metas)
    assert sorted(df.key) == sorted(k for m in metas for k in m.key)

    images = {}
    for tar_path in sorted(path.glob("*.tar")):
        for name, data in tar_members(tar_path):
            key, ext = name.split(".", 1)
            if ext == "jpg":
                images[key] = data
    df_by_key = df.set_index("key")
    # every row: scored, or a reason
    assert (df_by_key["aesthetic_score"].notna() == df_by_key["error"].isna()).all()
    assert (df_by_key["image_embedding"].notna() == df_by_key["aesthetic_score"].notna()).all()
    for key, row in df_by_key.iterrows():
        if row["status"] != "success":
            assert key not in images
            assert f"img2dataset status {row['status']}" in row["error"], (key, row["error"])
    assert_rows_match(df, images, direct)
    if variant == "disable_all_reencoding":  # HTML, truncated JPEG, broken PNG stored as .jpg
        assert df["error"].notna().sum() >= 3
        assert df["error"].str.contains("not an image PIL can read").any()


# --------------------------------------------------------------------------- save + reload
def test_embedding_column_round_trips_through_save_metadata(img2dataset_dir, tmp_path, tiny_checkpoint,
                                                            aesthetic_weights):
    root, expected = img2dataset_dir
    ds = ImageTextPairDataset.from_webdataset(str(root))
    out = embedder(tiny_checkpoint, aesthetic_weights)(ds)
    computed = out.metadata.compute(scheduler="sync")
    with dask_sync():
        out.save_metadata(str(tmp_path / "saved"))
    reloaded = ImageTextPairDataset.from_webdataset(str(tmp_path / "saved")).metadata.compute(scheduler="sync")
    assert reloaded["image_embedding"].dtype == pd.ArrowDtype(pa.list_(pa.float32(), 768))
    assert list(reloaded.key) == list(computed.key)
    a, va = frames.embeddings_to_matrix(computed["image_embedding"])
    b, vb = frames.embeddings_to_matrix(reloaded["image_embedding"])
    np.testing.assert_array_equal(va, vb)
    np.testing.assert_array_equal(a, b)  # bit-identical float32
    assert b.dtype == np.float32
    np.testing.assert_array_equal(reloaded["aesthetic_score"], computed["aesthetic_score"])
    pd.testing.assert_series_equal(reloaded["error"], computed["error"], check_dtype=False)
    # every other column is kept, and plain pandas can read the files
    plain = pd.read_parquet(tmp_path / "saved" / "00000.parquet")
    assert {"url", "caption", "status", "image_embedding", "aesthetic_score", "error"} <= set(plain.columns)


def dask_sync():
    import dask

    return dask.config.set(scheduler="sync")

