"""Semantic dedup through the 1.x front (SemanticDeduplicationWorkflow) on a real LocalCluster:
planted exact and near copies go (exactly one of each pair), copies just outside eps and rows
without a usable embedding stay, and bad input gets a clear error with the input untouched."""
import glob
import hashlib
import os

import numpy as np
import pandas as pd
import pytest
from dedup_data import EPS, planted_embeddings

from nemo_aesthetic.stages.deduplication.semantic import RankingStrategy, SemanticDeduplicationWorkflow


def write_embeddings(root, ids, vectors, n_files=4, extra=None):
    os.makedirs(root, exist_ok=True)
    rows = pd.DataFrame({"image_id": ids, "embedding": [v for v in vectors], **(extra or {})})
    for i, part in enumerate(np.array_split(np.arange(len(rows)), n_files)):
        rows.iloc[part].to_parquet(os.path.join(root, f"part_{i}.parquet"), index=False)
    return rows


def removed_ids(output):
    files = glob.glob(os.path.join(output, "duplicates", "*.parquet"))
    return list(pd.concat([pd.read_parquet(f) for f in files])["id"]) if files else []


def tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(root, "**"), recursive=True)):
        if os.path.isfile(path):
            digest.update(path.encode() + open(path, "rb").read())
    return digest.hexdigest()


@pytest.mark.parametrize(("which_to_keep", "metric"), [("hard", "cosine"), ("easy", "l2"), ("random", "cosine")])
def test_planted_pairs_exactly_one_of_each_goes(tmp_path, cpu_client, which_to_keep, metric):
    ids, vectors, expected = planted_embeddings()
    write_embeddings(tmp_path / "emb", ids, vectors)
    before = tree_digest(tmp_path / "emb")
    result = SemanticDeduplicationWorkflow(
        input_path=str(tmp_path / "emb"), output_path=str(tmp_path / "out"), n_clusters=8, id_field="image_id",
        embedding_field="embedding", eps=EPS, which_to_keep=which_to_keep, distance_metric=metric,
        verbose=False).run()
    removed = removed_ids(tmp_path / "out")
    assert len(removed) == len(set(removed)) == len(expected) == result.get_metadata("num_duplicates")
    for copy, original in expected.items():
        assert (copy in removed) != (original in removed), (copy, original)
    outside = {i for i in ids if i.startswith("outside")}
    assert not outside & set(removed)
    assert tree_digest(tmp_path / "emb") == before  # the input is untouched
    clustered = pd.read_parquet(glob.glob(str(tmp_path / "out" / "kmeans_results" / "**" / "*.parquet"),
                                          recursive=True))
    assert sorted(clustered["image_id"]) == sorted(ids)


def test_metadata_ranking_keeps_the_preferred_copy(tmp_path, cpu_client):
    ids, vectors, expected = planted_embeddings(seed=1)
    score = np.array([1.0 if i.startswith(("exact", "near")) else 0.0 for i in ids])  # copies score higher
    write_embeddings(tmp_path / "emb", ids, vectors, extra={"score": score})
    SemanticDeduplicationWorkflow(
        input_path=str(tmp_path / "emb"), output_path=str(tmp_path / "out"), n_clusters=6, id_field="image_id",
        embedding_field="embedding", metadata_fields=["score"], eps=EPS,
        ranking_strategy=RankingStrategy.metadata_based(["score"], ascending=False), verbose=False).run()
    assert sorted(removed_ids(tmp_path / "out")) == sorted(expected.values())  # originals go, copies stay


def test_rows_without_a_usable_embedding_are_kept_with_a_reason(tmp_path, cpu_client):
    ids, vectors, expected = planted_embeddings(n_base=120, n_each=3, seed=2)
    embeddings = [v for v in vectors] + [None, np.full(64, np.nan, np.float32), np.zeros(64, np.float32)]
    ids = ids + ["failed", "nan", "zero"]
    os.makedirs(tmp_path / "emb")
    pd.DataFrame({"image_id": ids, "embedding": embeddings}).to_parquet(tmp_path / "emb" / "a.parquet")
    result = SemanticDeduplicationWorkflow(
        input_path=str(tmp_path / "emb"), output_path=str(tmp_path / "out"), n_clusters=4, id_field="image_id",
        embedding_field="embedding", eps=EPS, verbose=False).run()
    removed = removed_ids(tmp_path / "out")
    assert len(removed) == len(expected) and all((c in removed) != (o in removed) for c, o in expected.items())
    left = pd.read_parquet(tmp_path / "out" / "unclustered").set_index("image_id")["reason"].to_dict()
    assert left == {"failed": "no embedding", "nan": "embedding has NaN or inf", "zero": "embedding is a zero vector"}
    assert result.get_metadata("num_unclustered") == 3


def test_bad_input_gets_a_clear_error_and_the_input_is_untouched(tmp_path, cpu_client):
    ids, vectors, _ = planted_embeddings(n_base=40, n_each=2)
    write_embeddings(tmp_path / "emb", ids, vectors, n_files=2)
    pd.DataFrame({"image_id": ["w1", "w2"], "embedding": [np.ones(32, np.float32)] * 2}).to_parquet(
        tmp_path / "emb" / "wide.parquet")
    before = tree_digest(tmp_path / "emb")
    kwargs = dict(id_field="image_id", embedding_field="embedding", eps=EPS, verbose=False)
    with pytest.raises(ValueError, match="different widths"):
        SemanticDeduplicationWorkflow(str(tmp_path / "emb"), str(tmp_path / "out"), n_clusters=2, **kwargs).run()
    os.remove(tmp_path / "emb" / "wide.parquet")
    before = tree_digest(tmp_path / "emb")
    with pytest.raises(ValueError, match="n_clusters=500 is larger than the 46 rows"):
        SemanticDeduplicationWorkflow(str(tmp_path / "emb"), str(tmp_path / "out"), n_clusters=500, **kwargs).run()
    for inside in (tmp_path / "emb", tmp_path / "emb" / "dedup"):
        with pytest.raises(ValueError, match="overlaps the input"):
            SemanticDeduplicationWorkflow(str(tmp_path / "emb"), str(inside), n_clusters=2, **kwargs)
    pd.DataFrame({"image_id": [ids[0]], "embedding": [vectors[0]]}).to_parquet(tmp_path / "emb" / "again.parquet")
    with pytest.raises(ValueError, match="duplicate ids"):
        SemanticDeduplicationWorkflow(str(tmp_path / "emb"), str(tmp_path / "out"), n_clusters=2, **kwargs).run()
    os.remove(tmp_path / "emb" / "again.parquet")
    assert tree_digest(tmp_path / "emb") == before
