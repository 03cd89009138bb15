"""The stage-style front: the README example as written, thresholds, writer, corrupt images."""
import functools
import io
import json
import logging
import os
import shutil
import sys
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from factory import TINY_KWARGS, TINY_MODEL, add_member, image_bytes, populate_hf_cache, tar_members, write_img2dataset
from test_nsfw import write_nsfw_weights

HUB_ID = "timm/vit_large_patch14_clip_224.openai"  # hf_hub_id of vit_large_patch14_clip_quickgelu_224.openai
COMMIT = "0123456789abcdef0123456789abcdef01234567"
EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, aesthetic_weights):
    """A model_dir as a user would have it: a pre-populated HF cache holding a tiny CLIP
    checkpoint, the real aesthetic weights, and NSFW weights (random, in the upstream format)."""
    import timm

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    state = timm.create_model(TINY_MODEL, **TINY_KWARGS).state_dict()
    populate_hf_cache(d, state, repo_id=HUB_ID, commit=COMMIT)
    torch.save(state, str(d / "tiny_clip.pth"))  # the same weights, for checkpoint_path
    shutil.copy(aesthetic_weights, d / "sac+logos+ava1-l14-linearMSE.pth")
    write_nsfw_weights(d / "clip_autokeras_binary_nsfw.pth", seed=11)
    return d


def _offline():
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["NEMO_AESTHETIC_OFFLINE"] = "1"
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True  # read once at import time


@pytest.fixture
def client(cpu_client):
    """The shared cluster, its workers made offline (they may predate this test's environment)."""
    cpu_client.run(_offline)
    return cpu_client


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "tar_dataset"
    expected = write_img2dataset(root, n_shards=2, rows_per_shard=6)
    return root, {k: v for k, v in expected.items() if v["status"] == "success"}


def _add_damaged_shard(root, good: dict) -> dict:
    """00002.tar: two good images, a truncated JPEG, a sample with no image member."""
    with tarfile.open(root / "00002.tar", "w") as tar:
        for i, kind in enumerate(["good", "truncated", "no_image", "good"]):
            key = f"00002{i:04d}"
            if kind == "good":
                good[key] = {"shard": "00002", "status": "success", "image": image_bytes(2000 + i)}
                add_member(tar, f"{key}.jpg", good[key]["image"])
            elif kind == "truncated":
                add_member(tar, f"{key}.jpg", image_bytes(2000 + i)[:300])
            add_member(tar, f"{key}.txt", f"caption {key}".encode())
            add_member(tar, f"{key}.json", json.dumps({"key": key, "caption": f"caption {key}"}).encode())
    return good


def _images(results):
    from nemo_aesthetic.stages.tasks import ImageBatch

    assert all(isinstance(b, ImageBatch) for b in results)
    return {im.image_id: im for b in results for im in b.data}


def _score_everything(model_dir, path):
    """A pipeline that keeps everything and sets both scores."""
    from nemo_aesthetic.pipeline import Pipeline
    from nemo_aesthetic.stages.file_partitioning import FilePartitioningStage
    from nemo_aesthetic.stages.image.embedders.clip_embedder import ImageEmbeddingStage
    from nemo_aesthetic.stages.image.filters.aesthetic_filter import ImageAestheticFilterStage
    from nemo_aesthetic.stages.image.filters.nsfw_filter import ImageNSFWFilterStage
    from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage

    return Pipeline("all", stages=[
        FilePartitioningStage(str(path), file_extensions=[".tar"]),
        ImageReaderStage(batch_size=4, num_threads=2),
        ImageEmbeddingStage(model_dir=str(model_dir), model_inference_batch_size=4, model_kwargs=TINY_KWARGS),
        ImageAestheticFilterStage(model_dir=str(model_dir), score_threshold=-np.inf),
        ImageNSFWFilterStage(model_dir=str(model_dir), score_threshold=np.inf),
    ])


def test_example_as_written_on_cpu_client(client, dataset, model_dir):
    """The README example, verbatim but for the paths and model_kwargs (see the note below)."""
    root, good = dataset
    path_to_tar_dataset, path_to_models = str(root), str(model_dir)

    # Note: model_kwargs is the one addition. timm builds a registry name like
    # vit_large_patch14_clip_quickgelu_224.openai from its own registry (it reads a config.json
    # from the HF cache only for "hf-hub:" names), so a tiny stand-in for the 300M-parameter
    # model must be described to it; the weights still come from the HF cache in model_dir.
    from nemo_aesthetic.pipeline import Pipeline
    from nemo_aesthetic.stages.file_partitioning import FilePartitioningStage
    from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage
    from nemo_aesthetic.stages.image.embedders.clip_embedder import ImageEmbeddingStage
    from nemo_aesthetic.stages.image.filters.aesthetic_filter import ImageAestheticFilterStage

    pipeline = Pipeline(name="aesthetic_filtering", description="Filter images by aesthetic quality")
    pipeline.add_stage(FilePartitioningStage(file_paths=path_to_tar_dataset, files_per_partition=1, file_extensions=[".tar"]))
    pipeline.add_stage(ImageReaderStage(batch_size=100, num_gpus_per_worker=0.25))
    pipeline.add_stage(ImageEmbeddingStage(model_dir=path_to_models, model_inference_batch_size=32, num_gpus_per_worker=0.25, model_kwargs=TINY_KWARGS))
    pipeline.add_stage(ImageAestheticFilterStage(model_dir=path_to_models, score_threshold=0.5, model_inference_batch_size=32, num_gpus_per_worker=0.25))
    results = pipeline.run()

    # The same numbers as the legacy front with the same weights (given as checkpoint_path).
    from nemo_aesthetic.datasets import ImageTextPairDataset
    from nemo_aesthetic.image.classifiers import AestheticClassifier
    from nemo_aesthetic.image.embedders import TimmImageEmbedder

    legacy = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=str(model_dir / "tiny_clip.pth"),
                               batch_size=8, classifiers=[AestheticClassifier(
                                   model_path=str(model_dir / "sac+logos+ava1-l14-linearMSE.pth"))])
    df = legacy(ImageTextPairDataset.from_webdataset(str(root))).metadata.compute(scheduler="sync")
    df = df[df["aesthetic_score"].notna()].set_index("key")
    assert set(df.index) == set(good)
    want = set(df.index[df["aesthetic_score"] >= 0.5])

    images = _images(results)
    assert set(images) == want
    assert len(results) == 2  # one batch per shard (batch_size=100)
    for key, im in images.items():
        assert im.image_path.endswith(f"{good[key]['shard']}.tar/{key}.jpg")
        caption = df.loc[key, "caption"]
        assert im.metadata["caption"] == ("" if pd.isna(caption) else caption)  # .txt is "" for a null caption
        assert im.metadata["key"] == key  # the .json member's fields
        np.testing.assert_array_equal(im.image_data, np.asarray(Image.open(io.BytesIO(good[key]["image"])).convert("RGB")))
        assert im.embedding.dtype == np.float32 and im.embedding.shape == (768,)
        np.testing.assert_allclose(im.embedding, np.asarray(df.loc[key, "image_embedding"], dtype=np.float32),
                                   atol=1e-5)
        assert im.aesthetic_score == pytest.approx(df.loc[key, "aesthetic_score"], abs=1e-4)
        assert im.aesthetic_score >= 0.5 and im.nsfw_score is None


def test_thresholds_writer_and_corrupt_images(client, dataset, model_dir, tmp_path):
    from nemo_aesthetic.pipeline import Pipeline
    from nemo_aesthetic.stages.file_partitioning import FilePartitioningStage
    from nemo_aesthetic.stages.image.embedders.clip_embedder import ImageEmbeddingStage
    from nemo_aesthetic.stages.image.filters.aesthetic_filter import ImageAestheticFilterStage
    from nemo_aesthetic.stages.image.filters.nsfw_filter import ImageNSFWFilterStage
    from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage
    from nemo_aesthetic.stages.image.io.image_writer import ImageWriterStage

    root, good = dataset
    good = _add_damaged_shard(root, dict(good))

    # Everything kept: the damaged samples are dropped with their reasons, the rest of 00002 survives.
    results = _score_everything(model_dir, root).run(executor=client)
    images = _images(results)
    assert set(images) == set(good)
    errors = dict(e for b in results for e in b.errors)
    assert set(errors) == {"000020001", "000020002"}
    assert "truncated" in errors["000020001"] or "cannot decode" in errors["000020001"]
    assert "no image member" in errors["000020002"]
    aesthetic = {k: im.aesthetic_score for k, im in images.items()}
    nsfw = {k: im.nsfw_score for k, im in images.items()}
    assert len(set(aesthetic.values())) == len(aesthetic) and len(set(nsfw.values())) == len(nsfw)

    def stages(*filters, writer=None):
        # Batches as in _score_everything, so each image's score is computed bit for bit the same.
        return [FilePartitioningStage(str(root), file_extensions=[".tar"]),
                ImageReaderStage(batch_size=4, num_threads=2),
                ImageEmbeddingStage(model_dir=str(model_dir), model_inference_batch_size=4, model_kwargs=TINY_KWARGS),
                *filters, *([writer] if writer else [])]

    # Aesthetic keeps score >= threshold: the image scoring exactly the threshold stays.
    boundary = sorted(aesthetic, key=aesthetic.get)[len(aesthetic) // 2]
    threshold = aesthetic[boundary]
    out = tmp_path / "out"
    written_tasks = Pipeline("aesthetic", stages=stages(
        ImageAestheticFilterStage(model_dir=str(model_dir), score_threshold=threshold),
        writer=ImageWriterStage(str(out), images_per_tar=3))).run(executor=client)
    # The writer returns upstream's FileGroupTask of what it wrote: images-<hash>-<chunk>.tar/.parquet.
    files = sorted(os.path.basename(p) for t in written_tasks for p in t.data)
    assert files == sorted(os.listdir(out)) and all(f.startswith("images-") for f in files)
    kept = {k: images[k] for k in pd.concat(pd.read_parquet(out / f) for f in files if f.endswith(".parquet"))["image_id"]}
    assert boundary in kept
    assert set(kept) == {k for k, s in aesthetic.items() if s >= threshold}

    # The writer: original bytes and members under the original keys, a parquet per tar.
    written, rows = {}, []
    for name in sorted(os.listdir(out)):
        if name.endswith(".tar"):
            members = tar_members(out / name)
            assert len({n.split(".")[0] for n, _ in members}) <= 3
            written.update(dict(members))
            table = pd.read_parquet(out / name.replace(".tar", ".parquet"))
            assert list(table["image_id"]) == list(dict.fromkeys(n.split(".")[0] for n, _ in members))
            assert list(table["member_name"]) == [f"{k}.jpg" for k in table["image_id"]]
            assert set(table["tar_file"]) == {str(out / name)}
            rows.append(table)
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    assert {n.split(".")[0] for n in written} == set(kept)
    for key in kept:
        assert written[f"{key}.jpg"] == good[key]["image"]
        assert written[f"{key}.txt"].decode() == (kept[key].metadata["caption"] or "")
        assert json.loads(written[f"{key}.json"])["key"] == key
    meta = pd.concat(rows).set_index("image_id")
    for key, im in kept.items():
        assert meta.loc[key, "caption"] == (im.metadata["caption"])
        assert meta.loc[key, "aesthetic_score"] == im.aesthetic_score
        assert meta.loc[key, "original_path"] == im.image_path
        np.testing.assert_array_equal(np.asarray(meta.loc[key, "embedding"], dtype=np.float32), im.embedding)

    # NSFW keeps score < threshold: the image scoring exactly the threshold goes.
    boundary = sorted(nsfw, key=nsfw.get)[len(nsfw) // 2]
    kept = _images(Pipeline("nsfw", stages=stages(
        ImageNSFWFilterStage(model_dir=str(model_dir), score_threshold=nsfw[boundary]))).run(executor=client))
    assert boundary not in kept
    assert set(kept) == {k for k, s in nsfw.items() if s < nsfw[boundary]}


def test_reader_logs_why_it_drops_an_image(dataset, caplog):
    from nemo_aesthetic.stages.file_partitioning import FilePartitioningStage
    from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage

    root, good = dataset
    good = _add_damaged_shard(root, dict(good))
    (task,) = FilePartitioningStage(str(root / "00002.tar"), file_extensions=[".tar"]).process()
    with caplog.at_level(logging.WARNING, logger="nemo_aesthetic"):
        batches = ImageReaderStage(batch_size=10, num_threads=2).process(task)
    assert [im.image_id for b in batches for im in b.data] == ["000020000", "000020003"]
    logged = [r.getMessage() for r in caplog.records if r.name == "nemo_aesthetic"]
    assert any("000020001" in m and ("truncated" in m or "cannot decode" in m) for m in logged), logged
    assert any("000020002" in m and "no image member" in m for m in logged), logged

    # A tar cut short: the samples before the damage survive, the error is logged.
    data = (root / "00000.tar").read_bytes()
    (root / "cut.tar").write_bytes(data[:len(data) // 2 + 100])
    (task,) = FilePartitioningStage(str(root / "cut.tar"), file_extensions=[".tar"]).process()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nemo_aesthetic"):
        batches = ImageReaderStage(batch_size=10, num_threads=2).process(task)
    survivors = [im.image_id for b in batches for im in b.data]
    assert 0 < len(survivors) < sum(v["shard"] == "00000" for v in good.values())
    assert all(good[k]["shard"] == "00000" for k in survivors)
    assert any("cut.tar" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


def test_file_partitioning(dataset):
    from nemo_aesthetic.stages.file_partitioning import FilePartitioningStage

    root, good = dataset
    tasks = FilePartitioningStage(str(root), files_per_partition=1, file_extensions=[".tar"]).process()
    assert [[os.path.basename(p) for p in t.data] for t in tasks] == [["00000.tar"], ["00001.tar"]]
    assert [t._metadata["partition_index"] for t in tasks] == [0, 1]
    assert all(t.dataset_name == "tar_dataset" for t in tasks)
    (both,) = FilePartitioningStage([str(root)], files_per_partition=5, file_extensions=[".tar"]).process()
    assert len(both.data) == 2  # parquet and stats files are not shards
    # upstream's default extensions (.jsonl, .json, .parquet): no tars
    assert sorted(os.path.basename(t.data[0]) for t in FilePartitioningStage(str(root)).process()) == \
        ["00000.parquet", "00000_stats.json", "00001.parquet", "00001_stats.json"]
    assert len(FilePartitioningStage(str(root), limit=1).process()) == 1
    one_mb = FilePartitioningStage(str(root), blocksize="1MB", file_extensions=[".tar"]).process()
    assert [len(t.data) for t in one_mb] == [2]
    with pytest.raises(FileNotFoundError):
        FilePartitioningStage(str(root / "nope")).process()
    # fsspec URLs stay URLs, and the reader opens them.
    from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage

    url_tasks = FilePartitioningStage(root.as_uri(), files_per_partition=2, file_extensions=[".tar"]).process()
    assert url_tasks[0].data[0].startswith("file://")
    batches = ImageReaderStage(batch_size=100).process(url_tasks[0])
    assert sum(len(b.data) for b in batches) == len(good)


def test_gpu_resources_only_where_workers_advertise_them():
    from nemo_aesthetic.backends.dask import gpu_resources as _gpu_resources
    from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage

    class FakeClient:
        def __init__(self, resources):
            self.resources = resources

        def scheduler_info(self, **kwargs):
            return {"workers": {"tcp://w": {"resources": self.resources}}}

    stages = [ImageReaderStage(num_gpus_per_worker=0.25)]
    assert _gpu_resources(FakeClient({"GPU": 1}), stages) == {"GPU": 0.25}
    assert _gpu_resources(FakeClient({}), stages) is None
    assert _gpu_resources(FakeClient({"GPU": 1}), [ImageReaderStage(num_gpus_per_worker=0)]) is None


def test_missing_head_weights_name_the_path(tmp_path):
    from nemo_aesthetic.stages.image.filters.aesthetic_filter import ImageAestheticFilterStage
    from nemo_aesthetic.stages.image.filters.nsfw_filter import ImageNSFWFilterStage
    from nemo_aesthetic.weights import WeightsUnavailableError

    for stage, name in [(ImageAestheticFilterStage, "sac+logos+ava1-l14-linearMSE.pth"),
                        (ImageNSFWFilterStage, "clip_autokeras_binary_nsfw.pth")]:
        with pytest.raises(WeightsUnavailableError, match="offline") as info:
            stage(model_dir=str(tmp_path)).setup()
        assert os.path.join(str(tmp_path), name) in str(info.value)


def test_missing_clip_weights_offline_name_the_cache(client, dataset, tmp_path):
    from nemo_aesthetic.pipeline import Pipeline
    from nemo_aesthetic.stages.file_partitioning import FilePartitioningStage
    from nemo_aesthetic.stages.image.embedders.clip_embedder import ImageEmbeddingStage
    from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage

    root, _ = dataset
    empty = tmp_path / "empty_models"
    pipeline = Pipeline("missing", stages=[FilePartitioningStage(str(root), limit=1, file_extensions=[".tar"]),
                                           ImageReaderStage(),
                                           ImageEmbeddingStage(model_dir=str(empty), model_kwargs=TINY_KWARGS)])
    with pytest.raises(RuntimeError, match="cannot load CLIP model") as info:
        pipeline.run(executor=client)
    assert str(empty) in str(info.value) and HUB_ID in str(info.value)


def test_example_script_runs(client, dataset, model_dir, monkeypatch, capsys):
    """examples/stage_pipeline.py as shipped, with only the tiny model's shape supplied."""
    sys.path.insert(0, EXAMPLES)
    try:
        import stage_pipeline
    finally:
        sys.path.remove(EXAMPLES)
    monkeypatch.setattr(stage_pipeline, "ImageEmbeddingStage",
                        functools.partial(stage_pipeline.ImageEmbeddingStage, model_kwargs=TINY_KWARGS))
    root, good = dataset
    results = stage_pipeline.main(str(root), str(model_dir))
    assert set(_images(results)) <= set(good)
    assert "images kept" in capsys.readouterr().out


def test_pipeline_starts_and_closes_its_own_cluster(dataset, monkeypatch):
    """No client around: the pipeline starts a LocalCluster and closes it afterwards."""
    import nemo_aesthetic.distributed
    import nemo_aesthetic.backends.dask as pipeline_mod
    from nemo_aesthetic.pipeline import Pipeline
    from nemo_aesthetic.stages.file_partitioning import FilePartitioningStage
    from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage

    started = []

    def get_client(**kwargs):
        client = real_get_client(**{**kwargs, "n_workers": 1})
        started.append(client)
        return client

    real_get_client = nemo_aesthetic.distributed.get_client
    monkeypatch.setattr(pipeline_mod, "_current_client", lambda: None)
    monkeypatch.setattr(nemo_aesthetic.distributed, "get_client", get_client)
    root, good = dataset
    results = Pipeline("own", stages=[FilePartitioningStage(str(root), file_extensions=[".tar"]),
                                      ImageReaderStage(batch_size=2)]).run()
    assert set(_images(results)) == set(good)
    assert len(started) == 1 and started[0].status == "closed"


def test_add_stage_and_validation():
    from nemo_aesthetic.pipeline import Pipeline
    from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage

    p = Pipeline("p", description="d")
    assert p.add_stage(ImageReaderStage()) is p
    with pytest.raises(ValueError, match="No tar file paths"):
        p.run()
    with pytest.raises(TypeError):
        p.add_stage(object())
