"""Semantic dedup through the legacy front (NeMo Curator 0.x's ClusteringModel and
SemanticClusterLevelDedup on a DocumentDataset) on a real LocalCluster, with planted pairs."""
import os

import numpy as np
import pandas as pd
import pytest
from dedup_data import EPS, planted_embeddings

from nemo_aesthetic import ClusteringModel, SemanticClusterLevelDedup
from nemo_aesthetic.datasets import DocumentDataset


def run_legacy(tmp_path, frame, n_clusters, which_to_keep="hard", npartitions=3):
    dataset = DocumentDataset.from_pandas(frame, npartitions=npartitions)
    clustering = tmp_path / "clustering"
    clustered = ClusteringModel(id_column="key", embedding_column="image_embedding", max_iter=50,
                                n_clusters=n_clusters, random_state=42, clustering_output_dir=str(clustering))(dataset)
    dedup = SemanticClusterLevelDedup(n_clusters=n_clusters, emb_by_clust_dir=str(clustering / "embs_by_nearest_center"),
                                      id_column="key", which_to_keep=which_to_keep, sim_metric="cosine",
                                      embedding_column="image_embedding", batched_cosine_similarity=16,
                                      output_dir=str(tmp_path / "dups"))
    dedup.compute_semantic_match_dfs()
    return clustered, dedup.extract_dedup_data(eps_to_extract=EPS)


@pytest.mark.parametrize("which_to_keep", ["hard", "easy", "random"])
def test_planted_pairs_exactly_one_of_each_goes(tmp_path, cpu_client, which_to_keep):
    ids, vectors, expected = planted_embeddings(seed=3)
    frame = pd.DataFrame({"key": ids, "image_embedding": list(vectors), "caption": [f"c {i}" for i in ids]})
    clustered, removed = run_legacy(tmp_path, frame, n_clusters=8, which_to_keep=which_to_keep)
    removed = list(removed.df["key"].compute())
    assert len(removed) == len(set(removed)) == len(expected)
    for copy, original in expected.items():
        assert (copy in removed) != (original in removed), (copy, original)
    assert not {i for i in ids if i.startswith("outside")} & set(removed)
    every = clustered.df.compute()
    assert sorted(every["key"]) == sorted(ids) and every["nearest_cent"].between(0, 7).all()
    assert np.load(tmp_path / "clustering" / "kmeans_centroids.npy").shape == (8, 64)
    table = pd.read_parquet(tmp_path / "dups" / "semdedup_pruning_tables" / "cluster_0.parquet")
    assert list(table.columns) == ["id", "max_id", "cosine_sim_score"]
    summary = pd.read_csv(tmp_path / "dups" / f"dedup_summary_{EPS}.csv")
    assert summary.to_dict("records") == [{"eps": EPS, "kept": len(ids) - len(expected), "removed": len(expected),
                                           "total": len(ids)}]


def test_rows_without_embeddings_are_kept_with_a_reason(tmp_path, cpu_client):
    ids, vectors, expected = planted_embeddings(n_base=60, n_each=2, seed=4)
    frame = pd.DataFrame({"key": ids + ["failed"], "image_embedding": list(vectors) + [None]})
    _, removed = run_legacy(tmp_path, frame, n_clusters=2)
    removed = set(removed.df["key"].compute())
    assert len(removed) == len(expected) and "failed" not in removed
    left = pd.read_parquet(tmp_path / "clustering" / "unclustered")
    assert left.to_dict("records") == [{"key": "failed", "reason": "no embedding"}]


def test_too_many_clusters_is_a_clear_error(tmp_path, cpu_client):
    ids, vectors, _ = planted_embeddings(n_base=10, n_each=1)
    dataset = DocumentDataset.from_pandas(pd.DataFrame({"key": ids, "image_embedding": list(vectors)}))
    with pytest.raises(ValueError, match="n_clusters=50 is larger than the 13 rows"):
        ClusteringModel(id_column="key", embedding_column="image_embedding", n_clusters=50,
                        clustering_output_dir=str(tmp_path / "c"))(dataset)
    assert not os.path.exists(tmp_path / "c" / "embs_by_nearest_center")


def test_clustering_its_own_output_into_the_same_place_is_refused_before_anything_is_removed(tmp_path, cpu_client):
    ids, vectors, _ = planted_embeddings(seed=5)
    frame = pd.DataFrame({"key": ids, "image_embedding": list(vectors)})
    run_legacy(tmp_path, frame, n_clusters=4)
    clustered_dir = tmp_path / "clustering" / "embs_by_nearest_center"
    before = sorted(p.relative_to(tmp_path) for p in clustered_dir.rglob("*.parquet"))
    again = DocumentDataset.read_parquet(str(clustered_dir), columns=["key", "image_embedding"])
    model = ClusteringModel(id_column="key", embedding_column="image_embedding", n_clusters=4,
                            clustering_output_dir=str(tmp_path / "clustering"))
    with pytest.raises(ValueError, match="which this step clears before writing"):
        model(again)
    assert sorted(p.relative_to(tmp_path) for p in clustered_dir.rglob("*.parquet")) == before and before


def test_a_dataset_read_from_shards_is_protected_too(img2dataset_dir, tmp_path):
    from nemo_aesthetic.datasets import ImageTextPairDataset
    from nemo_aesthetic.dedup.clusters import read_paths, refuse_clearing_inputs

    root, _ = img2dataset_dir
    metadata = ImageTextPairDataset.from_webdataset(str(root), id_col="key").metadata[["key"]]
    found = read_paths(metadata)
    assert {os.path.basename(p) for p in found} >= {"00000.parquet", "00000.tar"}
    with pytest.raises(ValueError, match="which this step clears"):
        refuse_clearing_inputs(metadata, [str(root)])
    refuse_clearing_inputs(metadata, [str(tmp_path / "elsewhere")])  # another folder: nothing to refuse
