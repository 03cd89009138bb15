"""score_embeddings on embedding-reader's three layouts: real .npy/Parquet files, the real LAION heads,
the real ``embedding-reader`` package reading our input and our output, S3 on a moto server."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SHARED, needs_shared, skip_without_shared
from test_cluster_and_s3 import s3_endpoint  # noqa: F401  (the moto server fixture)

from nemo_aesthetic.embeddings import EmbeddingFileError, score_embeddings
from nemo_aesthetic.image.classifiers.aesthetic import load_linear, load_upstream

MODELS = SHARED / "models"
V2 = MODELS / "sac+logos+ava1-l14-linearMSE.pth"
V1_L14 = MODELS / "laion-v1" / "sa_0_4_vit_l_14_linear.pth"
pytestmark = needs_shared(V1_L14, "the real LAION aesthetic weights (v2 and V1)")
SIZES = [1000, 1, 2500]  # three files; with batch_rows=700 and rows_per_task=1000: several batches and tasks


@pytest.fixture
def weights_home(monkeypatch):
    skip_without_shared(V2, "the real LAION aesthetic weights")
    monkeypatch.setenv("NEMO_AESTHETIC_HOME", str(MODELS))
    return MODELS


def reference(x: np.ndarray, path=V2) -> np.ndarray:
    """The upstream model in float64 on the stored vectors (float16 widened exactly)."""
    model = (load_upstream(str(path)) if path == V2 else load_linear(str(path), x.shape[1])).double()
    with torch.inference_mode():
        return model(torch.as_tensor(x, dtype=torch.float64)).numpy().reshape(-1)


def unit_rows(n: int, dim: int = 768, seed: int = 0, dtype=np.float16) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def write_layout(root, layout: str, sizes=SIZES, dim: int = 768) -> tuple[str, str | None, list[np.ndarray]]:
    """clip-retrieval's layout: img_emb/img_emb_{i}.npy + metadata/metadata_{i}.parquet, or one
    Parquet per part with an ``embedding`` list column (as embedding-reader's parquet format reads)."""
    arrays = [unit_rows(n, dim, seed=i) for i, n in enumerate(sizes)]
    emb, meta = root / "img_emb", root / "metadata"
    emb.mkdir(parents=True)
    for i, x in enumerate(arrays):
        names = {"url": [f"http://x/{i}/{j}.jpg" for j in range(len(x))], "caption": [f"c{i}-{j}" for j in range(len(x))]}
        if layout == "parquet":
            table = pa.table({**names, "embedding": pa.array(list(x.astype(np.float32)), pa.list_(pa.float32()))})
            pq.write_table(table, emb / f"img_emb_{i}.parquet", row_group_size=600)
        else:
            np.save(emb / f"img_emb_{i}.npy", x)
            if layout == "parquet_npy":
                meta.mkdir(exist_ok=True)
                pq.write_table(pa.table(names), meta / f"metadata_{i}.parquet", row_group_size=600)
    return str(emb), (str(meta) if layout == "parquet_npy" else None), arrays


@pytest.mark.parametrize("layout", ["npy", "parquet_npy", "parquet"])
def test_layouts_score_like_the_reference_and_embedding_reader_reads_both_sides(tmp_path, weights_home, layout):
    EmbeddingReader = pytest.importorskip(
        "embedding_reader", reason="needs embedding-reader (pip install --no-deps embedding-reader)").EmbeddingReader
    emb, meta, arrays = write_layout(tmp_path / "in", layout)
    out = tmp_path / "out"
    summary = score_embeddings(emb, str(out), file_format=layout, metadata=meta, batch_rows=700, rows_per_task=1000)
    names = [f"img_emb_{i}.parquet" for i in range(len(SIZES))]
    assert sorted(os.listdir(out)) == names and summary["rows"] == sum(SIZES) and not summary["errors"]
    for name, x in zip(names, arrays):
        table = pq.read_table(out / name)
        expected_cols = ["aesthetic_score", "error"] if layout == "npy" else ["url", "caption", "aesthetic_score", "error"]
        assert table.column_names == expected_cols and table.num_rows == len(x)
        np.testing.assert_allclose(table["aesthetic_score"].to_numpy(), reference(x), rtol=0, atol=1e-5)
        if layout != "npy":
            assert table["caption"].to_pylist() == [f"c{name[8]}-{j}" for j in range(len(x))]

    # embedding-reader reads our input in our order ...
    reader = EmbeddingReader(emb, file_format=layout, metadata_folder=meta,
                             meta_columns=["caption"] if layout != "npy" else None)
    assert reader.count == sum(SIZES) and reader.dimension == 768
    # ... and our output as the metadata of the same embeddings, row for row.
    npy_root = emb if layout != "parquet" else None
    if npy_root:
        paired = EmbeddingReader(npy_root, file_format="parquet_npy", metadata_folder=str(out),
                                 meta_columns=["aesthetic_score"])
        seen = 0
        for batch, batch_meta in paired(batch_size=900, show_progress=False):
            np.testing.assert_allclose(batch_meta["aesthetic_score"].to_numpy(), reference(batch), rtol=0, atol=1e-5)
            seen += len(batch)
        assert seen == sum(SIZES)


def test_v1_head_and_bad_rows_get_null_with_a_reason(tmp_path, weights_home, monkeypatch):
    skip_without_shared(V1_L14, "the LAION-Aesthetics V1 ViT-L/14 head")
    monkeypatch.setenv("NEMO_AESTHETIC_HOME", str(V1_L14.parent))
    emb, _, arrays = write_layout(tmp_path / "in", "parquet", sizes=[8])
    x = arrays[0].astype(np.float32)
    x[1, 5], x[2, 0], x[3] = np.nan, np.inf, 0.0
    embedding = pa.array([None if i == 4 else list(r) for i, r in enumerate(x)], pa.list_(pa.float32()))
    pq.write_table(pa.table({"key": list(range(8)), "embedding": embedding}), os.path.join(emb, "img_emb_0.parquet"))
    summary = score_embeddings(emb, str(tmp_path / "out"), file_format="parquet", head="v1", columns=["key"])
    table = pq.read_table(tmp_path / "out" / "img_emb_0.parquet").to_pandas()
    assert pq.read_table(tmp_path / "out" / "img_emb_0.parquet")["error"].to_pylist()[:5] == [None, "embedding has NaN or infinite values",
                                           "embedding has NaN or infinite values",
                                           "embedding is all zeros (zero norm)", "embedding is null"]
    assert table["aesthetic_score"][1:5].isna().all()
    ok = [0, 5, 6, 7]
    np.testing.assert_allclose(table["aesthetic_score"][ok], reference(x[ok], V1_L14), rtol=0, atol=1e-5)
    assert summary["errors"] == {"embedding has NaN or infinite values": 2, "embedding is all zeros (zero norm)": 1,
                                 "embedding is null": 1}


def test_bad_files_are_clear_errors_naming_the_file(tmp_path, weights_home):
    emb, meta, _ = write_layout(tmp_path / "a", "parquet_npy", sizes=[5, 6])
    np.save(os.path.join(emb, "img_emb_1.npy"), unit_rows(7))
    with pytest.raises(EmbeddingFileError, match=r"img_emb_1.npy holds 7 embeddings but its metadata .*metadata_1.parquet holds 6"):
        score_embeddings(emb, str(tmp_path / "out_a"), file_format="parquet_npy", metadata=meta)
    assert not (tmp_path / "out_a").exists()  # nothing was started

    emb, _, _ = write_layout(tmp_path / "b", "npy", sizes=[5], dim=512)
    with pytest.raises(ValueError, match=r"768-d embeddings .* but .*img_emb_0.npy gives 512-d"):
        score_embeddings(emb, str(tmp_path / "out_b"))

    emb, _, _ = write_layout(tmp_path / "c", "npy", sizes=[5, 5])
    with open(os.path.join(emb, "img_emb_1.npy"), "wb") as f:
        f.write(b"<html>not an array</html>")
    with pytest.raises(EmbeddingFileError, match=r"cannot read .*img_emb_1.npy as a .npy file"):
        score_embeddings(emb, str(tmp_path / "out_c"))

    emb, _, _ = write_layout(tmp_path / "d", "npy", sizes=[50])
    path = os.path.join(emb, "img_emb_0.npy")
    os.truncate(path, os.path.getsize(path) - 768 * 2 * 10)
    with pytest.raises(EmbeddingFileError, match=r"img_emb_0.npy is truncated: .* 50 rows .* inside row 40"):
        score_embeddings(emb, str(tmp_path / "out_d"), batch_rows=16)
    assert not (tmp_path / "out_d").exists()  # found from the header and size, before any work

    with pytest.raises(ValueError, match="inside the embeddings folder"):
        score_embeddings(emb, os.path.join(emb, "scores"))


def test_resume_skips_what_this_head_wrote(tmp_path, weights_home, monkeypatch):
    emb, _, arrays = write_layout(tmp_path / "in", "npy")
    out = tmp_path / "out"
    first = score_embeddings(emb, str(out))
    assert len(first["written"]) == 3 and not first["skipped"]
    again = score_embeddings(emb, str(out))
    assert not again["written"] and len(again["skipped"]) == 3
    os.remove(out / "img_emb_1.parquet")
    mtime = os.path.getmtime(out / "img_emb_0.parquet")
    resumed = score_embeddings(emb, str(out))
    assert [os.path.basename(p) for p in resumed["written"]] == ["img_emb_1.parquet"]
    assert os.path.getmtime(out / "img_emb_0.parquet") == mtime
    np.testing.assert_allclose(pq.read_table(out / "img_emb_1.parquet")["aesthetic_score"].to_numpy(),
                               reference(arrays[1]), rtol=0, atol=1e-5)
    if V1_L14.exists():  # another head's output is not "done": it is rewritten
        monkeypatch.setenv("NEMO_AESTHETIC_HOME", str(V1_L14.parent))
        assert len(score_embeddings(emb, str(out), head="v1")["written"]) == 3
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]


def test_memory_is_bounded_by_the_batch_not_the_file(tmp_path, weights_home):
    import threading

    import psutil

    emb = tmp_path / "big"
    emb.mkdir()
    np.save(emb / "big.npy", unit_rows(100_000))  # 154 MB of float16
    process, peak, running = psutil.Process(), [0], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], process.memory_info().rss)

    score_embeddings(str(emb), str(tmp_path / "warm"), batch_rows=1024)  # weights, imports, first-use buffers
    before = process.memory_info().rss
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        score_embeddings(str(emb), str(tmp_path / "out"), batch_rows=1024)
    finally:
        running[0] = False
        sampler.join()
    growth = (peak[0] - before) / 2**20
    assert growth < 40, f"resident memory grew by {growth:.0f} MiB while scoring a 154 MB file in batches of 1024 rows"


def test_s3_and_a_local_cluster(tmp_path, weights_home, s3_endpoint, cpu_client):  # noqa: F811
    import boto3
    import s3fs

    storage_options = {"key": "testing", "secret": "testing",
                       "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="embeddings")
    emb, meta, arrays = write_layout(tmp_path / "in", "parquet_npy")
    fs = s3fs.S3FileSystem(**storage_options)
    fs.put(emb + "/", "embeddings/img_emb/", recursive=True)
    fs.put(meta + "/", "embeddings/metadata/", recursive=True)
    from distributed import get_task_stream

    with get_task_stream(cpu_client) as stream:
        summary = score_embeddings("s3://embeddings/img_emb", "s3://embeddings/scores", file_format="parquet_npy",
                                   metadata="s3://embeddings/metadata", columns=["caption"],
                                   storage_options=storage_options, client=cpu_client, batch_rows=700,
                                   rows_per_task=1000)
    assert summary["rows"] == sum(SIZES)
    # one task per 1,000-row range of each file and one write per file (a graph linear in files)
    from dask.utils import key_split

    prefixes = [key_split(t["key"]) for t in stream.data]
    assert prefixes.count("score-embeddings") == sum(-(-n // 1000) for n in SIZES), prefixes
    assert prefixes.count("write-scores") == len(SIZES), prefixes
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("embeddings/scores")) == [f"img_emb_{i}.parquet" for i in range(3)]
    for i, x in enumerate(arrays):
        with fs.open(f"embeddings/scores/img_emb_{i}.parquet", "rb") as f:
            table = pq.read_table(f)
        assert table.column_names == ["caption", "aesthetic_score", "error"]
        np.testing.assert_allclose(table["aesthetic_score"].to_numpy(), reference(x), rtol=0, atol=1e-5)


def test_empty_and_all_null_files_still_get_their_output(tmp_path, weights_home):
    emb = tmp_path / "emb"
    emb.mkdir()
    kind = pa.list_(pa.float32())
    x = unit_rows(3).astype(np.float32)
    parts = {"a": pa.array(list(x), kind), "b": pa.array([], kind), "c": pa.array([None, None], kind)}
    for name, embedding in parts.items():
        pq.write_table(pa.table({"key": [f"{name}{i}" for i in range(len(embedding))], "embedding": embedding}),
                       emb / f"{name}.parquet")
    summary = score_embeddings(str(emb), str(tmp_path / "out"), file_format="parquet")
    assert summary["rows"] == 5 and summary["errors"] == {"embedding is null": 2}
    tables = {n: pq.read_table(tmp_path / "out" / f"{n}.parquet") for n in parts}
    assert all(t.column_names == ["key", "aesthetic_score", "error"] for t in tables.values())
    assert [t.num_rows for t in tables.values()] == [3, 0, 2]
    np.testing.assert_allclose(tables["a"]["aesthetic_score"].to_numpy(), reference(x), rtol=0, atol=1e-5)

    npy = tmp_path / "npy"
    npy.mkdir()
    np.save(npy / "empty.npy", np.zeros((0, 768), np.float16))
    np.save(npy / "one.npy", unit_rows(1))
    assert score_embeddings(str(npy), str(tmp_path / "out_npy"))["rows"] == 1
    assert pq.read_table(tmp_path / "out_npy" / "empty.parquet").num_rows == 0
