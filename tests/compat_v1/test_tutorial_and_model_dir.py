"""NeMo Curator 1.x's model_dir layout and its image tutorial, renamed only, on local data.

``tutorial/`` holds ``tutorials/image/getting-started/{image_curation_example,helper}.py`` of
NeMo Curator v1.3.0 with ``nemo_curator`` replaced by ``nemo_aesthetic`` and nothing else.
"""
import os
import subprocess
import sys
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from factory import write_img2dataset

from compat_v1.hf_clip import write_hf_clip, write_upstream_model_dir

TUTORIAL = os.path.join(os.path.dirname(__file__), "tutorial")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))


def test_hf_clip_in_model_dir_gives_the_hf_models_embeddings(tmp_path):
    from nemo_aesthetic.models.clip import CLIPImageEmbeddings

    hf = write_hf_clip(tmp_path, seed=3)
    model = CLIPImageEmbeddings(str(tmp_path), device="cpu")
    model.setup()
    pixels = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        expected = hf.get_image_features(pixel_values=pixels)
    expected = getattr(expected, "pooler_output", expected)
    expected = torch.nn.functional.normalize(expected, dim=-1).numpy()
    ours, _ = model.forward(pixels)
    assert ours.shape == (4, 768)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)
    assert np.abs(ours - expected).max() < np.abs(ours[0] - ours[1]).max() / 100  # not a trivial match


def test_aesthetic_and_nsfw_weights_in_upstream_layout(tmp_path, aesthetic_weights):
    from nemo_aesthetic.image.classifiers import AestheticClassifier, NsfwClassifier
    from nemo_aesthetic.models.aesthetics import AestheticScorer
    from nemo_aesthetic.models.nsfw import NSFWScorer

    write_upstream_model_dir(tmp_path, aesthetic_weights)
    x = torch.nn.functional.normalize(torch.randn(6, 768), dim=-1)
    for scorer, legacy, path in [
        (AestheticScorer(model_dir=str(tmp_path)), AestheticClassifier(model_path=aesthetic_weights), None),
        (NSFWScorer(model_dir=str(tmp_path)), None,
         tmp_path / "laion" / "clip-autokeras-binary-nsfw" / "clip_autokeras_binary_nsfw.pth")]:
        scorer.setup()
        assert os.path.dirname(scorer.weights_path()).startswith(str(tmp_path / scorer.model_id))
        legacy = legacy or NsfwClassifier(model_path=str(path))
        np.testing.assert_allclose(scorer(x.numpy()).numpy(), legacy.load_model("cpu")(x).numpy().reshape(-1),
                                   rtol=0, atol=1e-5)


@pytest.mark.slow
def test_image_tutorial_runs_renamed_only(tmp_path, aesthetic_weights):
    data, out, models = tmp_path / "wds", tmp_path / "curated", tmp_path / "models"
    expected = write_img2dataset(data, n_shards=2, rows_per_shard=4)
    keys = {k for k, v in expected.items() if v["status"] == "success"}
    write_upstream_model_dir(models, aesthetic_weights)
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "NEMO_AESTHETIC_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "image_curation_example.py", "--input-wds-dataset-dir", str(data),
         "--output-dataset-dir", str(out), "--model-dir", str(models), "--skip-download",
         "--aesthetic-threshold", "-1000", "--nsfw-threshold", "2", "--images-per-tar", "3",
         "--embedding-batch-size", "2"],
        cwd=TUTORIAL, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Image curation pipeline completed!" in run.stdout
    assert "XennaExecutor runs this pipeline on Dask" in run.stderr
    tars = sorted(p for p in os.listdir(out) if p.endswith(".tar"))
    assert tars and all(p.startswith("images-") for p in tars)
    written = set()
    for name in tars:
        with tarfile.open(out / name) as tar:
            written |= {m.name.split(".")[0] for m in tar if m.name.endswith(".jpg")}
        rows = pd.read_parquet(out / name.replace(".tar", ".parquet"))
        assert rows["aesthetic_score"].notna().all() and rows["nsfw_score"].between(0, 1).all()
        assert len(rows["embedding"].iloc[0]) == 768
    assert written == keys
