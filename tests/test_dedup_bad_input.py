"""Bad input to semantic dedup, in each front: the 1.x workflow, the legacy classes and the
``dedup`` command. Mixed embedding widths, NaN / zero / missing vectors, repeated ids (also when the
two rows land in different clusters), too many clusters, an output inside the input: a clear error
or a per-row reason, no row lost, the input untouched."""
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dedup_data import EPS, planted_embeddings
from factory import write_img2dataset
from test_dedup_v1 import removed_ids, tree_digest, write_embeddings

from nemo_aesthetic import ClusteringModel, SemanticClusterLevelDedup, cli
from nemo_aesthetic.datasets import DocumentDataset
from nemo_aesthetic.stages.deduplication.semantic import SemanticDeduplicationWorkflow


# ------------------------------------------------------------------------------------ 1.x front
def test_v1_same_id_in_two_clusters_is_a_clear_error(tmp_path, cpu_client):
    """The per-cluster check cannot see an id whose two rows sit in different clusters: the
    workflow checks the ids of the whole input first, on the workers."""
    ids, vectors, _ = planted_embeddings(n_base=40, n_each=2)
    write_embeddings(tmp_path / "emb", ids, vectors, n_files=2)
    far = -vectors[0]  # the opposite direction: never in the cluster of ids[0]
    pd.DataFrame({"image_id": [ids[0]], "embedding": [far]}).to_parquet(tmp_path / "emb" / "again.parquet")
    before = tree_digest(tmp_path / "emb")
    with pytest.raises(ValueError, match=rf"duplicate ids in 'image_id' \(\['{ids[0]}'\]"):
        SemanticDeduplicationWorkflow(str(tmp_path / "emb"), str(tmp_path / "out"), n_clusters=4, id_field="image_id",
                                      embedding_field="embedding", eps=EPS, verbose=False).run()
    assert tree_digest(tmp_path / "emb") == before
    assert removed_ids(tmp_path / "out") == []


# ------------------------------------------------------------------------------------ legacy front
def legacy_cluster(tmp_path, frame, n_clusters=2, npartitions=2):
    dataset = DocumentDataset.from_pandas(frame, npartitions=npartitions)
    return ClusteringModel(id_column="key", embedding_column="image_embedding", max_iter=20, n_clusters=n_clusters,
                           clustering_output_dir=str(tmp_path / "clustering"))(dataset)


def test_legacy_mixed_widths_and_repeated_ids_are_clear_errors(tmp_path, cpu_client):
    ids, vectors, _ = planted_embeddings(n_base=20, n_each=1)
    wide = pd.DataFrame({"key": ["w1", "w2"], "image_embedding": [np.ones(32, np.float32)] * 2})
    frame = pd.concat([pd.DataFrame({"key": ids, "image_embedding": list(vectors)}), wide], ignore_index=True)
    with pytest.raises(ValueError, match="different widths"):
        legacy_cluster(tmp_path, frame)
    again = pd.DataFrame({"key": [ids[0]], "image_embedding": [-vectors[0]]})
    frame = pd.concat([pd.DataFrame({"key": ids, "image_embedding": list(vectors)}), again], ignore_index=True)
    with pytest.raises(ValueError, match=rf"duplicate ids in 'key' \(\['{ids[0]}'\]"):
        legacy_cluster(tmp_path, frame, n_clusters=4)
    assert not (tmp_path / "clustering" / "embs_by_nearest_center").exists()


def test_legacy_nan_and_zero_vectors_are_kept_with_their_reason(tmp_path, cpu_client):
    ids, vectors, expected = planted_embeddings(n_base=60, n_each=2, seed=5)
    bad = {"nan": np.full(64, np.nan, np.float32), "zero": np.zeros(64, np.float32), "failed": None}
    frame = pd.DataFrame({"key": ids + list(bad), "image_embedding": list(vectors) + list(bad.values())})
    clustered = legacy_cluster(tmp_path, frame, n_clusters=3)
    assert len(clustered.df.compute()) == len(ids)
    dedup = SemanticClusterLevelDedup(n_clusters=3, emb_by_clust_dir=str(tmp_path / "clustering" / "embs_by_nearest_center"),
                                      id_column="key", embedding_column="image_embedding",
                                      output_dir=str(tmp_path / "dups"))
    dedup.compute_semantic_match_dfs()
    removed = set(dedup.extract_dedup_data(eps_to_extract=EPS).df["key"].compute())
    assert len(removed) == len(expected) and not removed & set(bad)
    left = pd.read_parquet(tmp_path / "clustering" / "unclustered").set_index("key")["reason"].to_dict()
    assert left == {"nan": "embedding has NaN or inf", "zero": "embedding is a zero vector", "failed": "no embedding"}


def test_legacy_output_over_the_clustered_rows_is_refused(tmp_path, cpu_client):
    ids, vectors, _ = planted_embeddings(n_base=20, n_each=1)
    legacy_cluster(tmp_path, pd.DataFrame({"key": ids, "image_embedding": list(vectors)}))
    clusters = tmp_path / "clustering" / "embs_by_nearest_center"
    before = tree_digest(clusters)
    for output in (clusters.parent / "embs_by_nearest_center" / "semdedup_pruning_tables" / "..", clusters / "x" / ".."):
        dedup = SemanticClusterLevelDedup(n_clusters=2, emb_by_clust_dir=str(clusters), id_column="key",
                                          embedding_column="image_embedding", output_dir=str(output))
        with pytest.raises(ValueError, match="overlaps emb_by_clust_dir"):
            dedup.compute_semantic_match_dfs()
    assert tree_digest(clusters) == before


# ------------------------------------------------------------------------------------ the command
def scored_with_embeddings(root, embeddings: dict, n_shards=2, rows_per_shard=6):
    """An img2dataset-shaped dataset whose metadata has an image_embedding column, as after
    ``score``: ``embeddings`` maps a key to its vector (None, or a key left out: no embedding)."""
    write_img2dataset(root, n_shards=n_shards, rows_per_shard=rows_per_shard, fail_every=0)
    for shard in range(n_shards):
        path = root / f"{shard:05d}.parquet"
        table = pq.read_table(path)
        values = [embeddings.get(k) for k in table.column("key").to_pylist()]
        values = [None if v is None else [float(x) for x in v] for v in values]
        pq.write_table(table.append_column("image_embedding", pa.array(values, pa.list_(pa.float32()))), path)


def test_cli_rows_without_a_usable_embedding_get_a_reason_and_repeated_ids_their_own_verdict(tmp_path, capsys):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((12, 16)).astype(np.float32)
    keys = [f"{s:05d}{i:04d}" for s in range(2) for i in range(6)]
    embeddings = dict(zip(keys, base))
    embeddings["000010001"] = base[0].copy()  # an exact copy of 000000000 in the other shard: a tie, the first kept
    embeddings["000000003"] = np.full(16, np.nan, np.float32)
    embeddings["000000004"] = np.zeros(16, np.float32)
    embeddings.pop("000010005")  # no embedding (a failed image)
    data = tmp_path / "ds"
    scored_with_embeddings(data, embeddings)
    # the same id in both shards, rows with different pictures: each row keeps its own verdict
    path = data / "00001.parquet"
    table = pq.read_table(path).to_pandas()
    table.loc[table["key"] == "000010002", "key"] = "000000002"
    table.to_parquet(path, index=False)
    before = {p.name: p.read_bytes() for p in data.iterdir()}

    out = tmp_path / "marked"
    assert cli.main(["dedup", str(data), "--eps", "0.001", "--n-clusters", "2", "--out", str(out),
                     "--cluster", "sync", "-q"]) == 0
    assert "duplicates: 1 " in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before
    rows = pd.concat([pd.read_parquet(out / f"{s:05d}.parquet") for s in range(2)], ignore_index=True)
    assert len(rows) == 12  # nothing lost
    marked = rows[rows["duplicate_of"].notna()]
    assert marked[["key", "duplicate_of"]].values.tolist() == [["000010001", "000000000"]]
    reasons = rows.set_index("key")["dedup_error"].dropna().to_dict()
    assert reasons == {"000000003": "embedding has NaN or inf", "000000004": "embedding is a zero vector",
                       "000010005": "no embedding"}
    assert rows.loc[rows["key"] == "000000002", "duplicate_of"].isna().all()  # both rows named 000000002 kept


def test_cli_mixed_widths_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    rng = np.random.default_rng(1)
    embeddings = {f"00000{i:04d}": rng.standard_normal(16) for i in range(6)}
    embeddings.update({f"00001{i:04d}": rng.standard_normal(8) for i in range(6)})
    data = tmp_path / "ds"
    scored_with_embeddings(data, embeddings)
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    assert cli.main(["dedup", str(data), "--eps", "0.01", "--cluster", "sync", "-q"]) == 2
    err = capsys.readouterr().err
    assert "different widths" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before  # in place, and still untouched
    assert not any(p.name.startswith(".nemo-aesthetic-dedup") for p in data.iterdir())
