"""The k-means fit's held blocks (nemo_aesthetic.dedup.fit_rows): held or read again, on a real
LocalCluster or in this process, the fit and the rows written by cluster are the same; rows
without a usable embedding keep their reason on every path; the input is never changed."""
import glob
import os

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from nemo_aesthetic.dedup import assign_partition, fit_rows
from nemo_aesthetic.dedup.clusters import write_clusters
from nemo_aesthetic.dedup.embeddings import partition_embeddings
from nemo_aesthetic.dedup.fit_rows import block_sums, fit_block, nearest
from nemo_aesthetic.dedup.kmeans import fit_kmeans
from nemo_aesthetic.engine.partitions import keep_dtypes


def embeddings_frame(n=400, dim=16, seed=0, bad=True):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((5, dim)) * 4
    vectors = [centers[i % 5] + rng.standard_normal(dim) for i in range(n)]
    if bad:  # a failed image, a NaN vector and a zero vector
        vectors[3], vectors[10] = None, np.full(dim, np.nan)
        vectors[17] = np.zeros(dim)
    return pd.DataFrame({"id": [f"r{i:04d}" for i in range(n)], "caption": [f"c{i}" for i in range(n)],
                         "emb": [None if v is None else np.asarray(v, np.float32) for v in vectors]})


def collection(frame, npartitions):
    with keep_dtypes():  # (the embeddings stay arrays, not text)
        return dd.from_pandas(frame, npartitions=npartitions)


def written(root):
    """Every row written under ``root`` (clusters and unclustered), in a canonical order."""
    parts = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*.parquet"), recursive=True)):
        frame = pd.read_parquet(path)
        frame["where"] = os.path.relpath(path, root)
        if "emb" in frame:
            frame["emb"] = [tuple(np.round(np.asarray(v), 5)) for v in frame["emb"]]
        parts.append(frame)
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(["where", "id"]).reset_index(drop=True)


@pytest.mark.parametrize("scheduler", ["distributed", "sync"])
def test_held_and_reread_fits_write_the_same_rows(tmp_path, cpu_client, scheduler):
    frame = embeddings_frame()
    ddf = collection(frame, 4)
    results = {}
    with dask.config.set(scheduler="sync") if scheduler == "sync" else dask.config.set({}):
        for hold in (True, False):
            fit = fit_kmeans(ddf, "emb", 5, max_iter=20, random_state=3, hold=hold, keep_columns=["id", "caption"])
            assert (fit.held is not None) == hold  # held rows are written from the blocks
            out = tmp_path / f"hold{hold}"
            counts = write_clusters(ddf, "emb", fit.centroids, str(out / "clusters"), ["id", "caption"],
                                    left_out_path=str(out / "unclustered"), held=fit.held)
            assert counts == (397, 3)
            results[hold] = (fit, written(out))
    (held, held_rows), (reread, reread_rows) = results[True], results[False]
    np.testing.assert_allclose(held.centroids, reread.centroids, atol=1e-5)
    assert held.n_iter == reread.n_iter and (held.rows, held.unclustered) == (reread.rows, reread.unclustered) == (400, 3)
    pd.testing.assert_frame_equal(held_rows, reread_rows, check_exact=False, atol=1e-5)
    left_out = held_rows[held_rows["where"].str.startswith("unclustered")].set_index("id")["reason"].to_dict()
    assert left_out == {"r0003": "no embedding", "r0010": "embedding has NaN or inf",
                        "r0017": "embedding is a zero vector"}
    assert set(held_rows["id"]) == set(frame["id"])  # no row lost


def test_fit_data_fraction_holds_a_share_and_writes_every_row_from_the_input(tmp_path, cpu_client):
    frame = embeddings_frame(n=2000, bad=False)
    ddf = collection(frame, 4)
    fit = fit_kmeans(ddf, "emb", 5, max_iter=10, fit_data_fraction=0.3, keep_columns=["id"])
    assert fit.held is None and fit.rows == 2000  # a share cannot be written from: read again
    clustered, left_out = write_clusters(ddf, "emb", fit.centroids, str(tmp_path / "c"), ["id"], held=fit.held)
    assert (clustered, left_out) == (2000, 0)


def test_cluster_files_hold_unit_vectors_sorted_into_their_cluster_without_a_dictionary(tmp_path, cpu_client):
    frame = embeddings_frame(bad=False)
    ddf = collection(frame, 2)
    fit = fit_kmeans(ddf, "emb", 5, max_iter=10, keep_columns=["id"])
    write_clusters(ddf, "emb", fit.centroids, str(tmp_path), ["id"], held=fit.held)
    files = glob.glob(str(tmp_path / "centroid=*" / "part.*.parquet"))
    assert len(files) >= 5
    for path in files:
        rows = pd.read_parquet(path)
        vectors = np.stack(rows["emb"].to_numpy())
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
        label = int(os.path.basename(os.path.dirname(path)).split("=")[1])
        nearest_label = np.argmin(((vectors[:, None, :] - fit.centroids[None]) ** 2).sum(-1), axis=1)
        assert (nearest_label == label).all()
        chunk = pq.ParquetFile(path).metadata.row_group(0)
        emb = next(chunk.column(i) for i in range(chunk.num_columns) if chunk.column(i).path_in_schema.startswith("emb"))
        assert not any("DICTIONARY" in e for e in emb.encodings)  # floats never repeat: no dictionary tried


def test_normalising_never_changes_the_callers_arrays():
    frame = embeddings_frame(bad=False)
    before = np.stack(frame["emb"].to_numpy()).copy()
    rows = partition_embeddings(frame, "emb", device="cpu")
    block = fit_block(frame, "emb", None, 0)
    np.testing.assert_array_equal(np.stack(frame["emb"].to_numpy()), before)
    np.testing.assert_allclose(rows.vectors.norm(dim=1).numpy(), 1, atol=1e-6)
    assert block.attrs["usable"] == len(frame)


def test_block_sums_are_the_per_centroid_counts_distances_and_sums(monkeypatch):
    monkeypatch.setattr(fit_rows, "NEAREST_ROWS", 7)  # several row blocks, one uneven
    frame = embeddings_frame(n=100, bad=False)
    block = fit_block(frame, "emb", None, 0)
    x = torch.nn.functional.normalize(torch.as_tensor(np.stack(frame["emb"].to_numpy())), dim=1)
    centroids = x[:4].numpy() * 0.9
    sums = block_sums(block, centroids)
    d2 = torch.cdist(x, torch.as_tensor(centroids)) ** 2
    labels = d2.argmin(1)
    for k in range(4):
        members = x[labels == k]
        assert sums[k, 0] == len(members)
        np.testing.assert_allclose(sums[k, 1], d2[labels == k, k].sum().item(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(sums[k, 2:], members.sum(0).numpy(), atol=1e-4)
    got_labels, got_d2, got_dot = nearest(x, torch.as_tensor(centroids))
    assert torch.equal(got_labels, labels)
    torch.testing.assert_close(got_dot, (x * torch.as_tensor(centroids)[labels]).sum(1), atol=1e-5, rtol=0)


def test_raw_rows_with_their_norms_are_assigned_as_their_unit_rows(monkeypatch):
    monkeypatch.setattr(fit_rows, "NEAREST_ROWS", 5)
    raw = torch.randn(23, 8, generator=torch.Generator().manual_seed(1)) * 3
    norms = raw.norm(dim=1)
    centroids = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(2)), dim=1)
    for got, expected in zip(nearest(raw, centroids, norms), nearest(raw / norms.unsqueeze(1), centroids)):
        torch.testing.assert_close(got, expected)
    frame = pd.DataFrame({"id": range(23), "e": list(raw.numpy())})
    out, left_out = assign_partition(frame, "e", centroids.numpy(), ["id", "e"])
    assert left_out is None and list(out.columns) == ["id", "e", "centroid", "l2_dist_to_cent", "cosine_dist_to_cent"]
    np.testing.assert_allclose(np.stack(out["e"].to_numpy()), (raw / norms.unsqueeze(1)).numpy(), atol=1e-6)
    assert out["centroid"].tolist() == nearest(raw, centroids, norms)[0].tolist()
