"""A frame fresh from the embedder is embedded once, however many passes a step makes over it
(select_top: three over the scores and one to mark; to_webdataset: the kept counts, then the
writes), counted at the model's own forward; metadata read from Parquet is not held in memory."""
from __future__ import annotations

import dask
import pytest
import torch
from factory import TINY_KWARGS, TINY_MODEL

from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.image.classifiers import AestheticClassifier
from nemo_aesthetic.image.embedders import TimmImageEmbedder

FORWARDED: list[int] = []  # images through the model's forward, in this process (synchronous scheduler)


class CountingForward(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        FORWARDED.append(len(batch))
        return self.model(batch)


class CountingEmbedder(TimmImageEmbedder):
    def load_embedding_model(self, device):
        return CountingForward(super().load_embedding_model(device))

    def model_cache_key(self, device: str) -> str:
        return "counting-" + super().model_cache_key(device)


@pytest.fixture
def counting(tiny_checkpoint, aesthetic_weights):
    def make():
        return CountingEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=tiny_checkpoint, batch_size=4,
                                classifiers=[AestheticClassifier(model_path=aesthetic_weights)])
    FORWARDED.clear()
    return make


def test_select_top_then_to_webdataset_embed_each_image_once(tmp_path, img2dataset_dir, counting):
    root, _ = img2dataset_dir
    with dask.config.set(scheduler="synchronous"):
        counting()(ImageTextPairDataset.from_webdataset(str(root))).metadata.compute()
        once = sum(FORWARDED)
        assert once > 0
        FORWARDED.clear()
        ds = counting()(ImageTextPairDataset.from_webdataset(str(root)))
        summary = ds.select_top(top_percent=50)
        result = ds.to_webdataset(str(tmp_path / "best"), filter_column="keep", samples_per_shard=3)
    assert sum(FORWARDED) == once, "select_top + to_webdataset embedded some images more than once"
    assert result["kept_rows"] == summary["kept"] > 0
    assert result["written"] == summary["kept"]  # (every kept row here has its image)


def test_to_webdataset_on_saved_metadata_persists_nothing(tmp_path, img2dataset_dir, cpu_client):
    """Metadata read from Parquet: the writes re-read it; no partition stays in the cluster's memory."""
    root, _ = img2dataset_dir
    before = set(cpu_client.who_has())  # (the cluster is shared by the session's tests)
    ds = ImageTextPairDataset.from_webdataset(str(root))
    ds.metadata["keep"] = ds.metadata["caption"].notnull()
    result = ds.to_webdataset(str(tmp_path / "out"), filter_column="keep", samples_per_shard=4)
    assert result["written"] > 0
    import time

    deadline = time.monotonic() + 10  # (results are released a moment after the client drops them)
    while (held := {k: w for k, w in cpu_client.who_has().items() if w and k not in before}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not held, f"to_webdataset left data held in the cluster: {list(held)[:5]}"


def test_importing_the_package_leaves_the_users_dask_config_alone():
    """A user's own dd.from_pandas frame has the string dtype dask gives it, with or without us."""
    import subprocess
    import sys

    code = ("import dask, dask.dataframe as dd, pandas as pd\n"
            "def user_frame():\n"
            "    return str(dd.from_pandas(pd.DataFrame({'s': ['a', 'b']}), npartitions=1).dtypes['s'])\n"
            "before = (dask.config.get('dataframe.convert-string', None), user_frame())\n"
            "import nemo_aesthetic, nemo_aesthetic.datasets, nemo_aesthetic.image.embedders, nemo_aesthetic.stages\n"
            "from nemo_aesthetic import ImageTextPairDataset, TimmImageEmbedder, AestheticClassifier\n"
            "after = (dask.config.get('dataframe.convert-string', None), user_frame())\n"
            "print(before, after)\n"
            "assert before == after, (before, after)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
