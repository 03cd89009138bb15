"""The command line for issue 15: ``score-embeddings``, ``filter --top-percent/--top-k``, ``score --head``."""
from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import skip_without_shared
from test_aesthetic_v1 import V1_DIR, reference_scores
from test_cli import _scored_dataset, read_shards
from test_score_embeddings import SIZES, reference, write_layout

from nemo_aesthetic import cli
from nemo_aesthetic.cli.options import HEAD_CHOICES
from nemo_aesthetic.frames import embeddings_to_matrix
from nemo_aesthetic.image.classifiers import aesthetic

MODELS = V1_DIR.parent


@pytest.fixture
def weights_home(monkeypatch):
    skip_without_shared(MODELS / "sac+logos+ava1-l14-linearMSE.pth", "the real LAION aesthetic weights")
    monkeypatch.setenv("NEMO_AESTHETIC_HOME", str(MODELS))


def test_head_choices_are_the_classifiers():
    assert HEAD_CHOICES == aesthetic.HEAD_CHOICES


def test_score_embeddings_command(tmp_path, weights_home, monkeypatch, capsys):
    emb, meta, arrays = write_layout(tmp_path / "in", "parquet_npy")
    out = tmp_path / "scores"
    assert cli.main(["score-embeddings", emb, "--out", str(out), "--metadata", meta, "--columns", "caption", "-q"]) == 0
    printed = capsys.readouterr().out
    assert f"files: 3 written, 0 already done   rows: {sum(SIZES)}   not scored: 0" in printed
    for i, x in enumerate(arrays):
        table = pq.read_table(out / f"img_emb_{i}.parquet")
        assert table.column_names == ["caption", "aesthetic_score", "error"]
        np.testing.assert_allclose(table["aesthetic_score"].to_numpy(), reference(x), rtol=0, atol=1e-5)
    assert cli.main(["score-embeddings", emb, "--out", str(out), "--metadata", meta, "--columns", "caption", "-q"]) == 0
    assert "files: 0 written, 3 already done" in capsys.readouterr().out
    # Other columns are another job: its files are rewritten, not taken as done.
    assert cli.main(["score-embeddings", emb, "--out", str(out), "--metadata", meta, "-q"]) == 0
    assert "files: 3 written, 0 already done" in capsys.readouterr().out
    assert pq.read_table(out / "img_emb_0.parquet").column_names == ["url", "caption", "aesthetic_score", "error"]

    # 512-d embeddings with the default v2 head: one line naming the file, exit 2, nothing written
    small, _, _ = write_layout(tmp_path / "small", "npy", sizes=[4], dim=512)
    assert cli.main(["score-embeddings", small, "--out", str(tmp_path / "s2"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "img_emb_0.npy gives 512-d" in err and len(err.strip().splitlines()) == 1, err
    if (V1_DIR / "sa_0_4_vit_b_32_linear.pth").exists():
        monkeypatch.setenv("NEMO_AESTHETIC_HOME", str(V1_DIR))
        assert cli.main(["score-embeddings", small, "--out", str(tmp_path / "s2"), "--head", "v1-b32", "-q"]) == 0


@pytest.mark.parametrize("option, value", [("--top-percent", "25"), ("--top-k", "7")])
def test_filter_top_percent_and_top_k(tmp_path, option, value, capsys):
    meta = _scored_dataset(tmp_path / "ds")
    scored = meta.dropna(subset=["aesthetic_score"])
    k = math.ceil(len(scored) * 0.25) if option == "--top-percent" else 7
    best = scored.sort_values("aesthetic_score", ascending=False, kind="stable")
    assert cli.main(["filter", str(tmp_path / "ds"), option, value, "--out", str(tmp_path / "best"), "-q"]) == 0
    kept = read_shards(tmp_path / "best")
    assert len(kept) == k
    assert sorted(kept["aesthetic_score"]) == sorted(best["aesthetic_score"][:k])
    assert kept["aesthetic_score"].min() >= best["aesthetic_score"].iloc[k]
    assert f"kept: {k} (top {value}" in capsys.readouterr().out


def test_score_with_head_v1_follows_the_model(tmp_path, monkeypatch, capsys):
    import timm
    from factory import write_img2dataset

    skip_without_shared(V1_DIR / "sa_0_4_vit_b_32_linear.pth", "the LAION-Aesthetics V1 ViT-B/32 head")
    monkeypatch.setenv("NEMO_AESTHETIC_HOME", str(V1_DIR))
    kwargs = {"depth": 1, "embed_dim": 32, "num_heads": 2, "global_pool": "avg"}
    model = "vit_base_patch32_clip_224.openai"
    torch.manual_seed(3)
    checkpoint = tmp_path / "b32.pth"
    torch.save(timm.create_model(model, pretrained=False, **kwargs).state_dict(), checkpoint)
    write_img2dataset(tmp_path / "ds", n_shards=1, rows_per_shard=6)
    import json

    assert cli.main(["score", str(tmp_path / "ds"), "--model", model, "--model-kwargs", json.dumps(kwargs),
                     "--clip-checkpoint", str(checkpoint), "--head", "v1", "--cluster", "sync", "-q"]) == 0
    df = read_shards(tmp_path / "ds")
    matrix, valid = embeddings_to_matrix(df["image_embedding"])
    assert matrix.shape[1] == 512 and valid.sum() >= 4
    np.testing.assert_allclose(df["aesthetic_score"].to_numpy(float)[valid],
                               reference_scores(V1_DIR / "sa_0_4_vit_b_32_linear.pth", matrix[valid]),
                               rtol=0, atol=1e-5)
