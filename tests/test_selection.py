"""Top-percent / top-k selection over a whole multi-partition dataset, against a plain sort of all
scores (the reference only a single machine could compute), with ties and null scores."""
from __future__ import annotations

import math

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.datasets.selection import mark_top


def write_scored(root, sizes=(40, 1, 0, 75, 33, 60, 12), seed=0) -> pd.DataFrame:
    """Metadata-only shards with scores rounded to 0.1 (many ties) and some nulls."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    frames = []
    for s, n in enumerate(sizes):
        scores = np.round(rng.normal(5, 1, n), 1).astype(np.float32)
        null = rng.random(n) < 0.1
        df = pd.DataFrame({"key": [f"{s:05d}{i:04d}" for i in range(n)]})
        table = pa.table({"key": df["key"], "aesthetic_score": pa.array(scores, mask=null)})
        pq.write_table(table, root / f"{s:05d}.parquet")
        frames.append(table.to_pandas())
    return pd.concat(frames, ignore_index=True)


def expected_keys(all_rows: pd.DataFrame, k: int) -> list[str]:
    """The reference: every score in one place, sorted (stable: ties in partition order)."""
    scored = all_rows.dropna(subset=["aesthetic_score"])
    return sorted(scored.sort_values("aesthetic_score", ascending=False, kind="stable")["key"][:k])


@pytest.mark.parametrize("how", [{"top_k": 1}, {"top_k": 37}, {"top_k": 10_000}, {"top_k": 0},
                                 {"top_percent": 10}, {"top_percent": 33.3}, {"top_percent": 100}])
def test_selection_equals_a_global_sort(tmp_path, how):
    all_rows = write_scored(tmp_path / "ds")
    ds = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
    assert ds.metadata.npartitions == 7
    scored = int(all_rows["aesthetic_score"].notna().sum())
    k = how.get("top_k", math.ceil(scored * how.get("top_percent", 0) / 100))
    with dask.config.set(scheduler="synchronous"):
        summary = ds.select_top(**how)
        df = ds.metadata.compute()
    kept = sorted(df.loc[df["keep"], "key"])
    assert kept == expected_keys(all_rows, k)
    assert summary["kept"] == len(kept) == min(k, scored) and summary["scored"] == scored
    if kept:
        assert summary["threshold"] == pytest.approx(df.loc[df["keep"], "aesthetic_score"].min())
        # nothing left out scores above the threshold (ties at it are cut to make exactly k)
        assert (df.loc[~df["keep"], "aesthetic_score"].dropna() <= summary["threshold"]).all()


def test_on_a_cluster_and_written_with_to_webdataset(tmp_path, cpu_client, img2dataset_dir):
    root, _ = img2dataset_dir
    ds = ImageTextPairDataset.from_webdataset(str(root))
    scores = np.linspace(1, 9, len(ds.metadata.compute()))
    rng = np.random.default_rng(1)
    rng.shuffle(scores)
    starts = np.cumsum([0, *ds.metadata.map_partitions(len).compute()])
    ds.metadata = ds.metadata.map_partitions(
        lambda df, partition_info=None: df.assign(aesthetic_score=scores[starts[partition_info["number"]]:][:len(df)]),
        meta=ds.metadata._meta.assign(aesthetic_score=np.float64()))
    summary = ds.select_top(top_percent=25)
    result = ds.to_webdataset(str(tmp_path / "best"), filter_column="keep", samples_per_shard=4)
    assert summary["kept"] == math.ceil(len(scores) * 0.25)
    assert summary["threshold"] == pytest.approx(np.sort(scores)[::-1][summary["kept"] - 1])
    assert result["kept_rows"] == summary["kept"]


def test_bad_arguments():
    frame = pd.DataFrame({"aesthetic_score": [1.0, 2.0]})
    import dask.dataframe as dd

    metadata = dd.from_pandas(frame, npartitions=1)
    with pytest.raises(ValueError, match="exactly one"):
        mark_top(metadata, top_k=1, top_percent=5)
    with pytest.raises(ValueError, match="0..100"):
        mark_top(metadata, top_percent=150)
    with pytest.raises(KeyError, match="no column 'score'"):
        mark_top(metadata, "score", top_k=1)


def test_mark_top_on_any_dask_frame(tmp_path):
    """E.g. the Parquet files score_embeddings writes, read back with dd.read_parquet."""
    import dask.dataframe as dd

    rng = np.random.default_rng(5)
    for i in range(4):
        pq.write_table(pa.table({"aesthetic_score": rng.normal(5, 1, 50).round(1).astype(np.float32)}),
                       tmp_path / f"img_emb_{i}.parquet")
    frame = dd.read_parquet(str(tmp_path))
    with dask.config.set(scheduler="synchronous"):
        marked, summary = mark_top(frame, top_percent=10)
        df = marked.compute()
    assert summary == {"scored": 200, "kept": 20, "threshold": summary["threshold"]} and df["keep"].sum() == 20
    assert df.loc[df["keep"], "aesthetic_score"].min() >= df.loc[~df["keep"], "aesthetic_score"].max()


def test_a_subset_of_partitions_keeps_what_the_whole_keeps_there(tmp_path):
    """Ten shards of one tied score, top 3: the three ties kept are the first ones, all in shard 0.
    Computing only shards 5..9 (``.partitions[5:10]``), or only some of them out of order, must keep
    none there; a partition's allowance is its own, not that of its position in the computation."""
    root = tmp_path / "ds"
    root.mkdir()
    for s in range(10):
        pq.write_table(pa.table({"key": [f"{s:05d}{i:04d}" for i in range(4)],
                                 "aesthetic_score": pa.array([7.0] * 4, pa.float32())}), root / f"{s:05d}.parquet")
    ds = ImageTextPairDataset.from_webdataset(str(root))
    with dask.config.set(scheduler="synchronous"):
        summary = ds.select_top(top_k=3)
        whole = ds.metadata.compute()
        tail = ds.metadata.partitions[5:10].compute()
        picked = ds.metadata.partitions[[7, 0, 3]].compute()
        assigned = ds.metadata.assign(again=ds.metadata["keep"]).partitions[0].compute()
    assert summary == {"scored": 40, "kept": 3, "threshold": 7.0}
    assert sorted(whole.loc[whole["keep"], "key"]) == ["000000000", "000000001", "000000002"]
    assert len(tail) == 20 and not tail["keep"].any()
    assert list(picked.groupby(picked["key"].str[:5], sort=False)["keep"].sum()) == [0, 3, 0]
    assert list(assigned["again"]) == [True, True, True, False]
