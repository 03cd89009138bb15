"""NeMo Curator 1.x's image dedup tutorial (``tutorials/image/getting-started/image_dedup_example.py``
of v1.3.0, ``nemo_curator`` renamed ``nemo_aesthetic`` and nothing else) on local shards with
planted byte-identical copies across shards."""
import glob
import os
import subprocess
import sys
import tarfile

import pandas as pd
import pytest
from factory import add_member, write_img2dataset

from compat_v1.hf_clip import write_upstream_model_dir

TUTORIAL = os.path.join(os.path.dirname(__file__), "tutorial")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
#: (copy's key, shard it is added to, original's key): copies in another shard than the original.
PLANTED = [("dupcopy0001", 1, "000000000"), ("dupcopy0002", 2, "000010005"), ("dupcopy0003", 3, "000020010")]


def _tar_images(path) -> dict:
    out = {}
    for tar_path in sorted(glob.glob(os.path.join(str(path), "*.tar"))):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                if m.name.endswith(".jpg"):
                    out[m.name.rsplit(".", 1)[0]] = tar.extractfile(m).read()
    return out


@pytest.mark.slow
def test_image_dedup_tutorial_runs_renamed_only(tmp_path, aesthetic_weights):
    data, out, models = tmp_path / "wds", tmp_path / "deduped", tmp_path / "models"
    write_img2dataset(data, n_shards=4, rows_per_shard=40, fail_every=0)
    images = _tar_images(data)
    for key, shard, original in PLANTED:
        with tarfile.open(data / f"{shard:05d}.tar", "a") as tar:
            add_member(tar, f"{key}.jpg", images[original])
    images = _tar_images(data)
    assert len(images) == 163 and len(images) > 100  # the tutorial asks for 100 clusters
    write_upstream_model_dir(models, aesthetic_weights)
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "NEMO_AESTHETIC_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "image_dedup_example.py", "--input-wds-dataset-dir", str(data),
         "--output-dataset-dir", str(out), "--embeddings-dir", str(tmp_path / "embeddings"),
         "--removal-parquets-dir", str(tmp_path / "removal"), "--model-dir", str(models), "--skip-download",
         "--embedding-batch-size", "16"],
        cwd=TUTORIAL, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "Image curation pipeline completed!" in run.stdout

    embeddings = pd.read_parquet(tmp_path / "embeddings")
    assert sorted(embeddings["image_id"]) == sorted(images) and embeddings["embedding"].map(len).eq(768).all()
    removed = set(pd.read_parquet(tmp_path / "removal" / "duplicates")["id"])
    kept = _tar_images(out)
    assert set(kept) == set(images) - removed  # every image is kept or listed as a duplicate
    for key, _, original in PLANTED:
        # never both; both may go when each duplicates a third, earlier-ranked image (the random
        # test CLIP maps these gradient pictures close together)
        assert not (key in kept and original in kept), f"{key} copies {original}: one of them must go"
    # every removed image has a kept image it duplicates, at the similarity the workflow used
    pairs = pd.read_parquet(tmp_path / "removal" / "pairwise_results")
    matched = pairs.set_index("id").loc[sorted(removed)]
    assert (matched["cosine_sim_score"] >= 0.99).all()
    assert len(kept) >= 1 and len(removed) >= len(PLANTED)
