"""NsfwClassifier: the PyTorch port's state-dict format, scores, weights resolution."""
import io
import os
import zipfile

import numpy as np
import pytest
import torch

from factory import TINY_KWARGS, TINY_MODEL

NSFW_KEYS = {"norm.mean", "norm.variance", "linear_1.weight", "linear_1.bias", "linear_2.weight",
             "linear_2.bias", "linear_3.weight", "linear_3.bias", "linear_4.weight", "linear_4.bias"}


def random_nsfw_state(seed: int = 0) -> dict:
    """A state dict in the format of NeMo Curator's port of LAION's detector, random weights."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"linear_1": (64, 768), "linear_2": (512, 64), "linear_3": (256, 512), "linear_4": (1, 256)}
    state = {"norm.mean": torch.randn(768, generator=g) * 0.02,
             "norm.variance": torch.rand(768, generator=g) * 1e-3 + 1e-3}
    for name, (out, inp) in shapes.items():
        state[f"{name}.weight"] = torch.randn(out, inp, generator=g) / inp ** 0.5
        state[f"{name}.bias"] = torch.randn(out, generator=g) * 0.1
    return state


def write_nsfw_weights(path, seed: int = 0) -> dict:
    state = random_nsfw_state(seed)
    torch.save(state, str(path))
    return state


def direct_nsfw(state: dict, x: torch.Tensor) -> torch.Tensor:
    """The detector written out by hand, in float64."""
    s = {k: v.double() for k, v in state.items()}
    h = (x.double() - s["norm.mean"]) / s["norm.variance"].sqrt()
    for i in (1, 2, 3):
        h = torch.relu(h @ s[f"linear_{i}.weight"].T + s[f"linear_{i}.bias"])
    return torch.sigmoid(h @ s["linear_4.weight"].T + s["linear_4.bias"]).reshape(-1)


def test_state_dict_keys_match_the_pytorch_port():
    from nemo_aesthetic.image.classifiers.nsfw import nsfw_model

    assert set(nsfw_model().state_dict()) == NSFW_KEYS


def test_scores_match_direct_computation(tmp_path):
    from nemo_aesthetic.image.classifiers import NsfwClassifier

    path = tmp_path / "clip_autokeras_binary_nsfw.pth"
    state = write_nsfw_weights(path)
    clf = NsfwClassifier(model_path=str(path))
    assert clf.pred_column == "nsfw_score" and clf.embedding_column == "image_embedding"
    x = torch.nn.functional.normalize(torch.randn(9, 768, generator=torch.Generator().manual_seed(3)), dim=-1)
    got = clf.load_model("cpu")(x)
    want = direct_nsfw(state, x)
    assert got.shape == (9,)
    np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    assert ((got > 0) & (got < 1)).all() and got.std() > 1e-3  # probabilities, not all the same


def test_legacy_front_fused_with_embedder(img2dataset_dir, tmp_path):
    from nemo_aesthetic.datasets import ImageTextPairDataset
    from nemo_aesthetic.frames import embeddings_to_matrix
    from nemo_aesthetic.image.classifiers import NsfwClassifier
    from nemo_aesthetic.image.embedders import TimmImageEmbedder

    root, expected = img2dataset_dir
    path = tmp_path / "nsfw.pth"
    state = write_nsfw_weights(path, seed=5)
    ds = ImageTextPairDataset.from_webdataset(str(root))
    emb = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, batch_size=8,
                            classifiers=[NsfwClassifier(model_path=str(path))])
    df = emb(ds).metadata.compute(scheduler="sync")
    assert len(df) == len(expected)
    scored = df["nsfw_score"].notna()
    assert scored.sum() == sum(v["status"] == "success" for v in expected.values())
    matrix, valid = embeddings_to_matrix(df["image_embedding"])
    want = direct_nsfw(state, torch.from_numpy(matrix[valid])).numpy()
    np.testing.assert_allclose(df.loc[scored, "nsfw_score"].to_numpy(dtype=float), want, rtol=1e-5, atol=1e-6)


def test_wrong_state_dict_is_refused(tmp_path):
    from nemo_aesthetic.image.classifiers import NsfwClassifier

    path = tmp_path / "bad.pth"
    torch.save({"layers.0.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(ValueError, match="not a CLIP-based NSFW detector state dict"):
        NsfwClassifier(model_path=str(path)).load_model("cpu")


def test_missing_weights_offline_names_file_directory_and_url():
    from nemo_aesthetic.image.classifiers import NsfwClassifier
    from nemo_aesthetic.weights import WeightsUnavailableError, cache_dir

    with pytest.raises(WeightsUnavailableError) as info:
        NsfwClassifier()
    msg = str(info.value)
    assert os.path.join(cache_dir(), "clip_autokeras_binary_nsfw.pth") in msg
    assert "clip_autokeras_binary_nsfw.zip" in msg and "offline" in msg


def _mirror(tmp_path, monkeypatch, pth_bytes: bytes):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "clip_autokeras_binary_nsfw.zip", "w") as zf:
        zf.writestr("clip_autokeras_binary_nsfw.pth", pth_bytes)
    monkeypatch.setenv("NEMO_AESTHETIC_MIRROR", mirror.as_uri())
    monkeypatch.setenv("NEMO_AESTHETIC_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")


def test_download_extracts_zip_verifies_and_caches(tmp_path, monkeypatch):
    from nemo_aesthetic.image.classifiers import NsfwClassifier
    from nemo_aesthetic.weights import cache_dir

    buf = io.BytesIO()
    state = random_nsfw_state(7)
    torch.save(state, buf)
    _mirror(tmp_path, monkeypatch, buf.getvalue())
    clf = NsfwClassifier()
    assert clf.model_path == os.path.join(cache_dir(), "clip_autokeras_binary_nsfw.pth")
    assert open(clf.model_path, "rb").read() == buf.getvalue()
    x = torch.randn(4, 768)
    np.testing.assert_allclose(clf.load_model("cpu")(x).double().numpy(), direct_nsfw(state, x).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_download_of_a_wrong_file_leaves_no_cache(tmp_path, monkeypatch):
    from nemo_aesthetic.image.classifiers import NsfwClassifier
    from nemo_aesthetic.weights import WeightsUnavailableError, cache_dir

    buf = io.BytesIO()
    torch.save({"something.else": torch.zeros(2)}, buf)
    _mirror(tmp_path, monkeypatch, buf.getvalue())
    with pytest.raises(WeightsUnavailableError, match="not a CLIP-based NSFW detector"):
        NsfwClassifier()
    assert not os.path.exists(os.path.join(cache_dir(), "clip_autokeras_binary_nsfw.pth"))
