"""The semantic-dedup cells of NeMo Curator 0.x's image tutorial
(``tutorials/image-curation/image-curation.ipynb`` at v0.9.0, in ``tutorial/`` with outputs cleared
and ``nemo_curator`` renamed ``nemo_aesthetic``, nothing else) run as written, in order, on a
local dataset with a byte-identical image planted in another shard.

The cells that download MS-COCO and embed it with the real ViT-L/14 are replaced by the same
calls on a tiny model of that family (the dedup cells only need the ``image_embedding`` column);
the aesthetic-filter cells are skipped (the tiny model's embeddings do not fit the real head), so
cell 28, which shows an image of the filtered dataset, is pointed at the input.
"""
import io
import json
import tarfile
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from factory import TINY_KWARGS, TINY_MODEL, add_member, write_img2dataset

NOTEBOOK = Path(__file__).parent / "tutorial" / "image-curation.ipynb"
COPY, ORIGINAL = "000019999", "000000002"  # shard 1 gets a copy of shard 0's image 2


def cells_from(markers):
    code = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    chosen = []
    for marker in markers:
        found = [c for c in code if marker in "".join(c["source"])]
        assert len(found) == 1, marker
        chosen.append("".join(found[0]["source"]))
    return chosen


def plant_copy(root):
    with tarfile.open(root / "00000.tar") as tar:
        image = tar.extractfile(f"{ORIGINAL}.jpg").read()
    with tarfile.open(root / "00001.tar", "a") as tar:
        add_member(tar, f"{COPY}.jpg", image)
        add_member(tar, f"{COPY}.txt", b"a copy")
    rows = pd.read_parquet(root / "00001.parquet")
    extra = rows.iloc[:1].assign(key=COPY, url=f"http://127.0.0.1/{COPY}.jpg", caption="a copy", status="success",
                                 error_message=None)
    pd.concat([rows, extra], ignore_index=True).to_parquet(root / "00001.parquet", index=False)


@pytest.mark.slow
def test_semantic_dedup_cells_run_as_written(tmp_path, monkeypatch, cpu_client, tiny_checkpoint):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    write_img2dataset(tmp_path / "mscoco", n_shards=2, rows_per_shard=12, fail_every=6)
    plant_copy(tmp_path / "mscoco")
    ns = {}
    exec(cells_from(['dataset_path = "./mscoco"'])[0], ns)
    exec(cells_from(["from nemo_aesthetic.datasets import ImageTextPairDataset"])[0], ns)
    # cells 17 and 19, on the tiny model (same class, same call, same column)
    from nemo_aesthetic.image.embedders import TimmImageEmbedder

    ns["embedding_model"] = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=tiny_checkpoint,
                                              batch_size=8, normalize_embeddings=True, autocast=False)
    exec(cells_from(["dataset = embedding_model(dataset)"])[0], ns)
    exec(cells_from(["dataset.save_metadata()"])[0], ns)  # cell 21: compute, save, read back
    ns["aesthetic_dataset_path"] = ns["dataset_path"]  # cell 28 shows an image of it: the input, here
    for cell in cells_from(["def display_image_from_tar", "from nemo_aesthetic import ClusteringModel",
                            "semantic_dedup.compute_semantic_match_dfs()", '"is_unique"',
                            '"semdedup_pruning_tables", "cluster_0.parquet"', "df.head()",
                            '"000000004.jpg"', '"000000003.jpg"']):
        exec(cell, ns)

    metadata = ns["dataset"].metadata.compute()
    removed = set(ns["deduplicated_dataset_ids"].df["key"].compute())
    assert not (COPY not in removed and ORIGINAL not in removed), "the planted copy or its original must go"
    failed = set(metadata.loc[metadata["error"].notna(), "key"])  # failed downloads: no image, no embedding
    assert failed and not failed & removed  # rows without an embedding are never duplicates
    unclustered = pd.read_parquet(tmp_path / "semantic_deduplication" / "cluster_output" / "unclustered")
    assert set(unclustered["key"]) == failed and set(unclustered["reason"]) == {"no embedding"}
    written = set()
    for tar in sorted((tmp_path / "deduplicated_dataset").glob("*.tar")):
        with tarfile.open(tar) as t:
            written |= {m.name.split(".")[0] for m in t if m.name.endswith(".jpg")}
    # to_webdataset renames the samples it writes (upstream's id scheme): count them
    assert len(written) == len(set(metadata["key"]) - failed - removed) > 0
    table = ns["df"]  # the pruning table the notebook reads, filtered at eps=0.01
    assert set(table.columns) == {"id", "max_id", "cosine_sim_score"} and set(table["id"]) == removed
