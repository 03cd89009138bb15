"""AestheticClassifier: the folded head scores exactly what the upstream MLP scores.

Everything runs on the real LAION weights from ../shared/models and the golden values in
``reference_scores.json`` (computed with the upstream architecture, independently of this code).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from factory import TINY_KWARGS, TINY_MODEL
from conftest import AESTHETIC_WEIGHTS, needs_shared

from nemo_aesthetic import frames
from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.image.classifiers import AestheticClassifier
from nemo_aesthetic.image.classifiers.aesthetic import fold_affine, load_upstream
from nemo_aesthetic.image.embedders import TimmImageEmbedder
from nemo_aesthetic.weights import AESTHETIC_WEIGHTS as SPEC

MODELS_DIR = AESTHETIC_WEIGHTS.parent
REFERENCE = MODELS_DIR / "reference_scores.json"
pytestmark = needs_shared(AESTHETIC_WEIGHTS.parent / "reference_scores.json", "the real LAION aesthetic weights and their golden scores")


def unit_vectors(n: int, dim: int = 768, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_embedding_dataset(root: Path, shards: list[np.ndarray], valid: list[np.ndarray] | None = None) -> None:
    """Shards of ``key`` + ``image_embedding`` metadata only (standalone classifiers need no tars)."""
    root.mkdir(parents=True, exist_ok=True)
    for s, matrix in enumerate(shards):
        mask = np.ones(len(matrix), bool) if valid is None else valid[s]
        df = pd.DataFrame({"key": [f"{s:05d}{i:04d}" for i in range(len(matrix))]})
        df["image_embedding"] = frames.embeddings_to_series(matrix, mask, df.index)
        pq.write_table(frames.frame_to_arrow(df), root / f"{s:05d}.parquet")


def upstream_scores(path, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return load_upstream(str(path))(torch.as_tensor(x)).numpy().reshape(-1)


# --------------------------------------------------------------------------- fidelity
def test_folded_head_equals_unfolded_upstream_mlp(aesthetic_weights):
    x = unit_vectors(512)
    clf = AestheticClassifier(model_path=aesthetic_weights)
    with torch.inference_mode():
        folded = clf.load_model("cpu")(torch.as_tensor(x)).numpy()
    unfolded = upstream_scores(aesthetic_weights, x)
    assert folded.shape == (512,)
    np.testing.assert_allclose(folded, unfolded, rtol=0, atol=1e-5)
    # Against the upstream MLP in float64 end to end: folding loses nothing beyond float32 rounding.
    model64 = load_upstream(aesthetic_weights).double()
    with torch.inference_mode():
        exact = model64(torch.as_tensor(x, dtype=torch.float64)).numpy().reshape(-1)
    np.testing.assert_allclose(folded, exact, rtol=0, atol=5e-6)
    w, b = fold_affine(load_upstream(aesthetic_weights))
    np.testing.assert_allclose(x.astype(np.float64) @ w + b, exact, rtol=0, atol=1e-9)
    # And the scores are in the range the model is known for, not garbage that happens to agree.
    assert 2 < folded.min() and folded.max() < 9


def _reference():
    with open(REFERENCE) as f:
        return json.load(f)


def _available_reference_models():
    if not REFERENCE.exists():
        return []  # the module is skipped (pytestmark): parametrize over nothing
    ref = _reference()
    return [name for name in ref["models"] if (MODELS_DIR / name).exists()]


def test_reference_file_covers_the_weights_we_ship_against():
    ref = _reference()
    assert SPEC.filename in ref["models"]
    assert ref["models"][SPEC.filename]["sha256"] == SPEC.sha256
    assert SPEC.filename in _available_reference_models()


@pytest.mark.parametrize("model_name", _available_reference_models())
def test_parity_with_reference_scores(model_name):
    ref = _reference()
    model_ref = ref["models"][model_name]
    path = MODELS_DIR / model_name
    clf = AestheticClassifier(model_path=str(path))
    scorer = clf.load_model("cpu")
    for input_name, expected in model_ref["outputs"].items():
        x = np.asarray(ref["inputs"][input_name]["values"], dtype=np.float32)
        assert x.shape[1] == 768
        with torch.inference_mode():
            got = scorer(torch.as_tensor(x)).numpy()
        for variant in ("float32", "float64_weights_and_input", "float64_collapsed_affine"):
            np.testing.assert_allclose(got, expected[variant], rtol=0, atol=1e-5,
                                       err_msg=f"{model_name} {input_name} vs {variant}")
        # The unfolded upstream MLP agrees with the golden values too (the test's own anchor).
        np.testing.assert_allclose(upstream_scores(path, x), expected["float32"], rtol=0, atol=1e-5)
    affine = model_ref["effective_affine_float64"]
    w, b = fold_affine(load_upstream(str(path)))
    assert b == pytest.approx(affine["bias"], abs=1e-9)
    assert np.linalg.norm(w) == pytest.approx(affine["weight_norm"], abs=1e-9)
    np.testing.assert_allclose(w[:5], affine["weight_first5"], rtol=0, atol=1e-9)


def test_reference_inputs_regenerate_from_their_recipe():
    """The random golden inputs are what the recipe says (so the parity test tests real inputs)."""
    ref = _reference()
    torch.manual_seed(0)
    x = torch.randn(4, 768)
    x = x / x.norm(dim=-1, keepdim=True)
    np.testing.assert_allclose(x.numpy(), ref["inputs"]["b_seed0_randn4_l2norm"]["values"], rtol=0, atol=1e-7)


# --------------------------------------------------------------------------- on datasets
def test_scores_a_dataset_and_keeps_nulls_null(tmp_path, aesthetic_weights):
    x0, x1 = unit_vectors(7, seed=1), unit_vectors(5, seed=2)
    v0 = np.array([1, 0, 1, 1, 0, 1, 1], bool)
    v1 = np.zeros(5, bool)  # a shard with no embedding at all
    write_embedding_dataset(tmp_path / "ds", [x0, x1], [v0, v1])
    ds = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
    out = AestheticClassifier(model_path=aesthetic_weights)(ds).metadata.compute(scheduler="sync")

    assert len(out) == 12
    assert out["aesthetic_score"].dtype == np.float32
    s0 = out[out.key.str.startswith("00000")].set_index("key")["aesthetic_score"]
    expected = upstream_scores(aesthetic_weights, x0)
    for i, key in enumerate(f"00000{i:04d}" for i in range(7)):
        if v0[i]:
            assert s0[key] == pytest.approx(expected[i], abs=1e-5)
        else:
            assert np.isnan(s0[key])
    assert out[out.key.str.startswith("00001")]["aesthetic_score"].isna().all()


def test_512_d_embeddings_give_a_clear_error(tmp_path, aesthetic_weights):
    write_embedding_dataset(tmp_path / "ds", [unit_vectors(4, dim=512)])
    ds = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
    with pytest.raises(ValueError, match=r"768-d.*512-d"):
        AestheticClassifier(model_path=aesthetic_weights)(ds).metadata.compute(scheduler="sync")


def test_missing_embedding_column_is_named(tmp_path, aesthetic_weights):
    write_embedding_dataset(tmp_path / "ds", [unit_vectors(3)])
    ds = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
    with pytest.raises(KeyError, match="clip_emb"):
        AestheticClassifier(embedding_column="clip_emb", model_path=aesthetic_weights)(ds)


def test_batched_standalone_scoring_equals_whole_partition(tmp_path, aesthetic_weights):
    x = unit_vectors(23, seed=5)
    write_embedding_dataset(tmp_path / "ds", [x])
    ds = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
    whole = AestheticClassifier(model_path=aesthetic_weights)(ds).metadata.compute(scheduler="sync")
    batched = AestheticClassifier(model_path=aesthetic_weights, batch_size=4)(ds).metadata.compute(scheduler="sync")
    np.testing.assert_allclose(batched["aesthetic_score"], whole["aesthetic_score"], rtol=0, atol=1e-6)


def test_fused_equals_standalone_on_a_reloaded_dataset(img2dataset_dir, tmp_path, tiny_checkpoint, aesthetic_weights):
    """Embed once with the head fused; save; reload; score standalone: same scores, same rows."""
    root, expected = img2dataset_dir
    clf = AestheticClassifier(model_path=aesthetic_weights)
    ds = ImageTextPairDataset.from_webdataset(str(root))
    fused = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=tiny_checkpoint,
                              batch_size=3, classifiers=[clf])(ds)
    fused.save_metadata(str(tmp_path / "saved"))
    fused_df = fused.metadata.compute(scheduler="sync").set_index("key")

    reloaded = ImageTextPairDataset.from_webdataset(str(tmp_path / "saved"))
    assert "aesthetic_score" in reloaded.metadata.columns
    standalone = AestheticClassifier(model_path=aesthetic_weights, pred_column="rescored")(reloaded)
    alone_df = standalone.metadata.compute(scheduler="sync").set_index("key")

    assert sorted(alone_df.index) == sorted(expected)
    alone_df = alone_df.loc[fused_df.index]
    scored = fused_df["aesthetic_score"].notna()
    assert scored.sum() == sum(e["status"] == "success" for e in expected.values())
    assert (alone_df["rescored"].notna() == scored).all()
    np.testing.assert_allclose(alone_df.loc[scored, "rescored"], fused_df.loc[scored, "aesthetic_score"],
                               rtol=0, atol=1e-5)
    # the saved score column came back unchanged
    np.testing.assert_array_equal(alone_df["aesthetic_score"], fused_df["aesthetic_score"])
    # and both equal the unfolded MLP on the saved embeddings
    matrix, valid = frames.embeddings_to_matrix(alone_df["image_embedding"])
    np.testing.assert_allclose(alone_df.loc[valid, "rescored"],
                               upstream_scores(aesthetic_weights, matrix[valid]), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- wrong weights
def test_state_dict_of_other_shapes_is_a_clear_error(tmp_path, aesthetic_weights):
    bad = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.Dropout(), torch.nn.Linear(1024, 128),
                              torch.nn.Dropout(), torch.nn.Linear(128, 64), torch.nn.Dropout(),
                              torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))
    path = tmp_path / "openclip-b32-aesthetic.pth"
    torch.save({f"layers.{k}": v for k, v in bad.state_dict().items()}, path)
    clf = AestheticClassifier(model_path=str(path))
    with pytest.raises(ValueError, match="not a LAION aesthetic predictor state dict") as info:
        clf.load_model("cpu")
    assert str(path) in str(info.value)
    assert "size mismatch" in str(info.value)

    # and through a dataset: the error reaches the user as the same ValueError
    write_embedding_dataset(tmp_path / "ds", [unit_vectors(3)])
    ds = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
    with pytest.raises(ValueError, match="not a LAION aesthetic predictor"):
        clf(ds).metadata.compute(scheduler="sync")


def test_state_dict_with_missing_layers_or_garbage_is_a_clear_error(tmp_path, aesthetic_weights):
    state = torch.load(aesthetic_weights, map_location="cpu", weights_only=True)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("layers.7")}, partial)
    with pytest.raises(ValueError, match="Missing key"):
        AestheticClassifier(model_path=str(partial)).load_model("cpu")

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ValueError, match="cannot load aesthetic weights"):
        AestheticClassifier(model_path=str(garbage)).load_model("cpu")


def test_checkpoint_saved_without_layers_prefix_loads(tmp_path, aesthetic_weights):
    """A re-saved state dict of the same shape (keys ``0.weight`` ...) scores identically."""
    state = torch.load(aesthetic_weights, map_location="cpu", weights_only=True)
    path = tmp_path / "resaved.pth"
    torch.save({k.removeprefix("layers."): v for k, v in state.items()}, path)
    x = torch.as_tensor(unit_vectors(8))
    with torch.inference_mode():
        a = AestheticClassifier(model_path=str(path)).load_model("cpu")(x)
        b = AestheticClassifier(model_path=aesthetic_weights).load_model("cpu")(x)
    assert torch.equal(a, b)




def test_width_mismatch_is_refused_when_called_not_when_computed(tmp_path, aesthetic_weights):
    """A fixed-size embedding column carries its width: a wrong model is refused before any work."""
    import dask.dataframe as dd
    import pandas as pd

    from nemo_aesthetic import frames
    from nemo_aesthetic.datasets import ImageTextPairDataset
    from nemo_aesthetic.image.classifiers import AestheticClassifier

    emb = frames.embeddings_to_series(np.ones((2, 512), np.float32), np.ones(2, bool), pd.RangeIndex(2))
    ddf = dd.from_pandas(pd.DataFrame({"key": ["a", "b"], "image_embedding": emb}), npartitions=1)
    ds = ImageTextPairDataset(str(tmp_path), ddf, [None], "key")
    with pytest.raises(ValueError, match="768-d.*512-d"):
        AestheticClassifier(model_path=aesthetic_weights)(ds)
