"""GPU tests: run where CUDA is available (the lent H100), skipped elsewhere."""
import numpy as np
import pytest
import torch
from factory import TINY_KWARGS, TINY_MODEL, write_img2dataset

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


def _run(root, ckpt, weights, **kw):
    ds = ImageTextPairDataset.from_webdataset(str(root))
    emb = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=ckpt, batch_size=8,
                            classifiers=[AestheticClassifier(model_path=weights)], **kw)
    return emb(ds).metadata.compute(scheduler="sync").sort_values("key").reset_index(drop=True)


def test_cuda_nvjpeg_bf16_matches_cpu_reference(tmp_path, ckpt, aesthetic_weights):
    write_img2dataset(tmp_path / "ds", n_shards=2, rows_per_shard=16, image_size=(320, 240))
    cpu = _run(tmp_path / "ds", ckpt, aesthetic_weights, device="cpu", decode="pil", autocast=False)
    gpu = _run(tmp_path / "ds", ckpt, aesthetic_weights, device="cuda")  # nvJPEG + bf16 autocast
    assert cpu["error"].fillna("").tolist() == gpu["error"].fillna("").tolist()
    delta = (cpu["aesthetic_score"] - gpu["aesthetic_score"]).abs().dropna()
    assert len(delta) == 24
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

    with get_client(cluster_type="gpu") as client:
        assert len(client.scheduler_info()["workers"]) == torch.cuda.device_count()
