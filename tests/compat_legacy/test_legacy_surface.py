"""Legacy NeMo Curator (0.x) code runs with the package renamed: module paths, model classes,
classifier hooks and defaults, lazy weights, to_webdataset's id matching, user-built metadata.

Everything runs for real: real tars and Parquet, a real LocalCluster (``cpu_client``).
"""
from __future__ import annotations

import io
import os
import tarfile

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from factory import add_member, image_bytes


def test_legacy_module_paths_are_the_one_implementation():
    import nemo_aesthetic
    from nemo_aesthetic.datasets import ImageTextPairDataset
    from nemo_aesthetic.datasets.image_text_pair_dataset import ImageTextPairDataset as LegacyDataset
    from nemo_aesthetic.image.classifiers import AestheticClassifier, ImageClassifier, NsfwClassifier
    from nemo_aesthetic.image.classifiers.aesthetic import MLP
    from nemo_aesthetic.image.classifiers.aesthetic import AestheticClassifier as LegacyAesthetic
    from nemo_aesthetic.image.classifiers.base import ImageClassifier as LegacyBase
    from nemo_aesthetic.image.classifiers.nsfw import Normalization, NSFWModel
    from nemo_aesthetic.image.classifiers.nsfw import NsfwClassifier as LegacyNsfw
    from nemo_aesthetic.image.embedders import ImageEmbedder, TimmImageEmbedder
    from nemo_aesthetic.image.embedders.base import ImageEmbedder as LegacyEmbedder
    from nemo_aesthetic.image.embedders.timm import TimmImageEmbedder as LegacyTimm
    from nemo_aesthetic.utils.distributed_utils import get_client, load_object_on_worker  # noqa: F401

    assert LegacyDataset is ImageTextPairDataset and get_client is nemo_aesthetic.get_client
    assert (LegacyAesthetic, LegacyNsfw, LegacyBase) == (AestheticClassifier, NsfwClassifier, ImageClassifier)
    assert (LegacyEmbedder, LegacyTimm) == (ImageEmbedder, TimmImageEmbedder)
    assert MLP(768).layers[0].in_features == 768 and isinstance(NSFWModel().norm, Normalization)


def test_upstream_checkpoints_load_into_upstream_classes(real_aesthetic_weights):
    import torch

    from nemo_aesthetic.image.classifiers.aesthetic import MLP, AestheticClassifier

    clf = AestheticClassifier()  # default weights, as upstream: the path is resolved on construction
    model = MLP(768)
    model.load_state_dict(torch.load(clf.model_path, map_location="cpu", weights_only=True))
    x = torch.nn.functional.normalize(torch.randn(4, 768), dim=-1)
    folded = clf.load_model("cpu")(x)
    assert torch.allclose(folded.float(), model.eval()(x).squeeze(1), atol=1e-4)


def test_classifier_defaults_are_upstreams():
    from nemo_aesthetic.image.classifiers import NsfwClassifier

    clf = NsfwClassifier()
    assert (clf.model_name, clf.pred_type, clf.batch_size, clf.embedding_size) == ("nsfw_classifier", float, -1, 768)
    assert clf.model_path == os.path.join(os.environ["NEMO_AESTHETIC_HOME"], "clip_autokeras_binary_nsfw.pth")
    assert NsfwClassifier._get_default_model() == clf.model_path


def test_timm_embedder_defaults_are_upstreams():
    from nemo_aesthetic.image.embedders.timm import TimmImageEmbedder

    embedder = TimmImageEmbedder(model_name="resnet18")
    assert (embedder.model_name, embedder.pretrained, embedder.num_threads_per_worker) == ("resnet18", False, 4)
    assert (embedder.image_embedding_column, embedder.normalize_embeddings, embedder.autocast) == (
        "image_embedding", True, True)
    assert embedder.use_index_files is False and len(embedder.classifiers) == 0
    assert embedder.batch_size_on("cpu") == 1  # upstream's batch_size=1 (None here: 256 on CUDA)


def _embedding_dataset(root, n=6, dim=8, missing=(2,)):
    """A dataset whose metadata already has embeddings (one shard, some rows without)."""
    from nemo_aesthetic.datasets import ImageTextPairDataset

    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    emb = [None if i in missing else rng.normal(size=dim).astype(np.float32) for i in range(n)]
    pd.DataFrame({"key": [f"{i:09d}" for i in range(n)], "image_embedding": emb}).to_parquet(root / "00000.parquet")
    with tarfile.open(root / "00000.tar", "w"):
        pass
    return ImageTextPairDataset.from_webdataset(str(root), "key"), emb



def _threshold_classifier(model_path):
    import torch

    from nemo_aesthetic.image.classifiers.base import ImageClassifier

    class Threshold(ImageClassifier):
        def __init__(self, model_path):
            super().__init__(model_name="threshold", embedding_column="image_embedding", pred_column="is_bright",
                             pred_type=bool, batch_size=2, embedding_size=8)
            self.model_path = model_path

        def load_model(self, device):
            weight = torch.load(self.model_path, weights_only=True).to(device)
            return lambda x: x @ weight

        def postprocess(self, series):
            return series > 0

    return Threshold(model_path)


def test_user_classifier_hooks_run_on_workers_with_weights_made_after_construction(tmp_path, cpu_client):
    """load_model, postprocess and pred_type take effect; model_path is only opened on the worker."""
    import torch

    ds, emb = _embedding_dataset(tmp_path / "ds")
    weights = tmp_path / "only_later.pt"
    clf = _threshold_classifier(str(weights))  # nothing there yet: upstream stores the path
    torch.manual_seed(0)
    weight = torch.randn(8)
    torch.save(weight, weights)
    out = clf(ds).metadata.compute()
    assert str(out["is_bright"].dtype) == "boolean"
    for row, e in zip(out.itertuples(), emb):
        if e is None:
            assert row.is_bright is pd.NA  # no embedding: null, not a crash
        else:
            assert row.is_bright == bool(float(torch.as_tensor(e) @ weight) > 0)


def test_string_ids_match_zero_padded_members_by_value(tmp_path):
    """Ids "0", "1" against members 000000000.jpg ...: matched by integer value, as upstream does."""
    from nemo_aesthetic.datasets import ImageTextPairDataset

    root = tmp_path / "ds"
    root.mkdir()
    images = {i: image_bytes(i) for i in range(3)}
    with tarfile.open(root / "00000.tar", "w") as tar:
        for i, data in images.items():
            add_member(tar, f"{i:09d}.jpg", data)
            add_member(tar, f"{i:09d}.txt", f"caption {i}".encode())
    pd.DataFrame({"id": ["0", "1", "2"], "keep": [True, False, True]}).to_parquet(root / "00000.parquet")
    ds = ImageTextPairDataset.from_webdataset(str(root), "id")
    summary = ds.to_webdataset(str(tmp_path / "out"), "keep", old_id_col="old_id")
    assert summary["written"] == 2 and summary["missing"] == []
    written = pq.read_table(tmp_path / "out" / "00000.parquet").to_pandas()
    assert written["old_id"].tolist() == ["0", "2"]
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        jpgs = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")}
    assert [jpgs[f"{new}.jpg"] for new in written["id"]] == [images[0], images[2]]


def test_user_built_metadata_keeps_embeddings_as_numbers(tmp_path, caplog):
    """dd.from_pandas over object columns of arrays, built with dask's string conversion off (NeMo
    Curator 0.x switches it off for the whole process on import; we leave the user's config alone):
    saved as lists of floats, not strings. Built with dask's default, dask itself has turned them
    into text: the dataset says so when it is made, naming the fix."""
    import dask

    from nemo_aesthetic.datasets import ImageTextPairDataset

    root = tmp_path / "ds"
    root.mkdir()
    with tarfile.open(root / "00000.tar", "w") as tar:
        add_member(tar, "000000000.jpg", image_bytes(0))
    emb = [np.linspace(0, 1, 768, dtype=np.float32)]
    with dask.config.set({"dataframe.convert-string": False}):
        metadata = dd.from_pandas(pd.DataFrame({"key": ["000000000"], "image_embedding": emb}), npartitions=1)
    ds = ImageTextPairDataset(str(root), metadata, [str(root / "00000.tar")], "key")
    ds.save_metadata(str(tmp_path / "meta"))
    saved = pq.read_table(tmp_path / "meta" / "00000.parquet")
    assert saved.schema.field("image_embedding").type.value_type == "float"
    np.testing.assert_array_equal(np.asarray(saved["image_embedding"][0].as_py(), np.float32), emb[0])

    with dask.config.set({"dataframe.convert-string": True}):
        as_text = dd.from_pandas(pd.DataFrame({"key": ["000000000"], "image_embedding": emb}), npartitions=1)
    with caplog.at_level("WARNING"):
        ImageTextPairDataset(str(root), as_text, [str(root / "00000.tar")], "key")
    assert "image_embedding" in caplog.text and "convert-string" in caplog.text


def _legacy_style_embedder(classifiers):
    """Written as for NeMo Curator 0.x: only load_dataset_shard and load_embedding_model."""
    from nemo_aesthetic.image.embedders.base import ImageEmbedder

    class MeanColourEmbedder(ImageEmbedder):
        def __init__(self, classifiers):
            super().__init__("mean-colour", "image_embedding", classifiers)

        def load_dataset_shard(self, tar_path):
            import torch
            from PIL import Image

            with tarfile.open(tar_path) as tar:
                members = sorted((m for m in tar.getmembers() if m.name.endswith(".jpg")), key=lambda m: m.name)
                for start in range(0, len(members), 2):
                    chunk = members[start:start + 2]
                    images = [np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB"))
                              for m in chunk]
                    batch = torch.stack([torch.as_tensor(a, dtype=torch.float32).permute(2, 0, 1) / 255
                                         for a in images])
                    yield batch, [{"key": m.name.split(".")[0]} for m in chunk]

        def load_embedding_model(self, device):
            return lambda batch: batch.mean(dim=(2, 3))

    return MeanColourEmbedder(classifiers)


def _brightness_classifier():
    from nemo_aesthetic.image.classifiers.base import ImageClassifier

    class Bright(ImageClassifier):
        def __init__(self):
            super().__init__("bright", "image_embedding", "bright", bool, -1, 3)

        def load_model(self, device):
            return lambda embeddings: embeddings.sum(dim=1, keepdim=True)  # (n, 1), as upstream models give

        def postprocess(self, series):
            return series > 1.2

    return Bright()


def test_legacy_style_embedder_subclass_runs_with_its_own_shard_loader(tmp_path, cpu_client):
    from PIL import Image

    from factory import write_img2dataset
    from nemo_aesthetic.datasets import ImageTextPairDataset

    expected = write_img2dataset(tmp_path / "ds", n_shards=2, rows_per_shard=4)
    ds = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"), "key")
    out = _legacy_style_embedder([_brightness_classifier()])(ds).metadata.compute()
    assert sorted(out["key"]) == sorted(expected)  # every row comes out
    for row in out.itertuples():
        image = expected[row.key]["image"]
        if image is None:  # failed download: kept, with img2dataset's reason
            assert pd.isna(row.image_embedding) and row.bright is pd.NA
            assert "failed_to_download" in row.error
            continue
        mean = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"), np.float32).mean(axis=(0, 1)) / 255
        np.testing.assert_allclose(np.asarray(row.image_embedding), mean, rtol=1e-5)  # not normalised, as upstream
        assert row.bright == bool(mean.sum() > 1.2) and pd.isna(row.error)
