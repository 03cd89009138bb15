"""The two examples from the issues, as written, on the real ViT-L/14 architecture.

The CLIP weights are random (none can be downloaded here) but have the real shape, and they sit in
a Hugging Face cache laid out exactly as timm's hub download leaves it, with HF_HUB_OFFLINE=1: so
`TimmImageEmbedder("vit_large_patch14_clip_quickgelu_224.openai", pretrained=True)` goes through
timm's own hub loading unchanged. The aesthetic head is the real one, in $NEMO_AESTHETIC_HOME.
"""
import shutil

import numpy as np
import pytest
import torch
from factory import populate_hf_cache, write_img2dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_shape_models(tmp_path_factory, real_aesthetic_weights):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_large_patch14_clip_quickgelu_224", pretrained=False)
    model_dir = tmp_path_factory.mktemp("models")
    populate_hf_cache(model_dir / "hub", model.state_dict())
    shutil.copy(real_aesthetic_weights, model_dir / "sac+logos+ava1-l14-linearMSE.pth")
    del model
    return model_dir


@pytest.fixture
def env(real_shape_models, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(real_shape_models))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NEMO_AESTHETIC_HOME", str(real_shape_models))
    return real_shape_models


def test_legacy_example_as_written(tmp_path, env):
    expected = write_img2dataset(tmp_path / "dataset", n_shards=2, rows_per_shard=3, fail_every=3)
    path = str(tmp_path / "dataset")

    from nemo_aesthetic import get_client
    from nemo_aesthetic.datasets import ImageTextPairDataset
    from nemo_aesthetic.image.classifiers import AestheticClassifier
    from nemo_aesthetic.image.embedders import TimmImageEmbedder

    client = get_client(cluster_type="cpu", n_workers=1)  # the one change: one worker keeps CI's memory low
    try:
        dataset = ImageTextPairDataset.from_webdataset(path=path, id_col="key")
        embedder = TimmImageEmbedder("vit_large_patch14_clip_quickgelu_224.openai", pretrained=True,
                                     batch_size=1024, num_threads_per_worker=16, normalize_embeddings=True)
        dataset = AestheticClassifier()(embedder(dataset))
        dataset.save_metadata()
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()

    import pandas as pd

    saved = pd.concat([pd.read_parquet(tmp_path / "dataset" / f"{i:05d}.parquet") for i in range(2)])
    ok = saved["status"] == "success"
    assert ok.sum() == sum(e["status"] == "success" for e in expected.values())
    assert saved.loc[ok, "aesthetic_score"].notna().all() and saved.loc[~ok, "aesthetic_score"].isna().all()
    emb = np.stack(saved.loc[ok, "image_embedding"].to_list())
    assert emb.shape[1] == 768 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_stage_example_as_written(tmp_path, env):
    write_img2dataset(tmp_path / "tar_dataset", n_shards=2, rows_per_shard=3, fail_every=0)
    dataset_path, models_path = str(tmp_path / "tar_dataset"), str(env / "hub")
    shutil.copy(env / "sac+logos+ava1-l14-linearMSE.pth", env / "hub")

    from nemo_aesthetic.pipeline import Pipeline
    from nemo_aesthetic.stages.file_partitioning import FilePartitioningStage
    from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage
    from nemo_aesthetic.stages.image.embedders.clip_embedder import ImageEmbeddingStage
    from nemo_aesthetic.stages.image.filters.aesthetic_filter import ImageAestheticFilterStage

    pipeline = Pipeline(name="aesthetic_filtering", description="Filter images by aesthetic quality")
    pipeline.add_stage(FilePartitioningStage(file_paths=dataset_path, files_per_partition=1,
                                             file_extensions=[".tar"]))
    pipeline.add_stage(ImageReaderStage(batch_size=100, num_gpus_per_worker=0.25))
    pipeline.add_stage(ImageEmbeddingStage(model_dir=models_path, model_inference_batch_size=32,
                                           num_gpus_per_worker=0.25))
    pipeline.add_stage(ImageAestheticFilterStage(model_dir=models_path, score_threshold=0.5,
                                                 model_inference_batch_size=32, num_gpus_per_worker=0.25))
    results = pipeline.run()

    survivors = [img for batch in results for img in batch.data]
    assert len(survivors) == 6 and all(img.aesthetic_score >= 0.5 for img in survivors)
    assert sorted(img.image_id for img in survivors) == sorted(f"{s:05d}{i:04d}" for s in range(2) for i in range(3))
    assert all(img.embedding.shape == (768,) for img in survivors)
