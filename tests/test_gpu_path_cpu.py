"""The GPU path's cuDF/CuPy and CUDA-only steps, exercised on the CPU (issue 22).

cuDF and CuPy need CUDA to import, so these tests use the fakes in ``fake_rapids`` (only API the
real libraries have, with their refusals); tests/test_gpu.py runs the real thing on a GPU.
"""
import numpy as np
import pytest

import fake_rapids
from nemo_aesthetic import frames


@pytest.fixture
def cudf(monkeypatch):
    fake_rapids.install(monkeypatch)
    import cudf

    return cudf


def test_cudf_embedding_columns_are_built_without_set_axis(cudf):
    """The graph is built with empty columns on cuDF meta (empty_like_with): cuDF has no
    Series.set_axis, so the columns must take their index another way."""
    meta = cudf.DataFrame({"key": cudf.Series([], dtype="str")})
    out = frames.empty_like_with(meta, {"emb": "embedding:4", "any": "embedding:?", "score": "float32"})
    assert list(out.columns) == ["key", "emb", "any", "score"] and len(out) == 0
    partition = cudf.DataFrame({"key": cudf.Series(["a", "b", "c"])}, index=[10, 11, 12])
    series = frames.embeddings_to_series(np.arange(12, dtype=np.float32).reshape(3, 4),
                                         np.array([True, False, True]), partition.index, like=partition)
    assert type(series).__module__ == "cudf"
    assert list(series.index.to_pandas()) == [10, 11, 12]
    host = series.to_pandas()
    assert host[11] is None and list(host[12]) == [8.0, 9.0, 10.0, 11.0]


class _Doubler:
    """A classifier whose model doubles the first embedding value (a real torch computation)."""

    def __new__(cls):
        from nemo_aesthetic.image.classifiers.base import ImageClassifier

        class Doubler(ImageClassifier):
            def load_model(self, device):
                return lambda x: x[:, 0] * 2

        return Doubler("doubler", "emb", "score", embedding_size=4, device="cpu")


def test_classifier_scores_a_cudf_partition_with_a_cupy_validity_mask(cudf):
    """On cuDF, embeddings_to_matrix gives CuPy arrays; CuPy refuses np.asarray, so the classifier
    converts explicitly and rows without an embedding get a null score."""
    import pyarrow as pa

    emb = cudf.Series.from_arrow(pa.array([[1, 0, 0, 0], None, [3, 0, 0, 0]], type=pa.list_(pa.float32())))
    df = cudf.DataFrame({"emb": emb}, index=[5, 6, 7])
    got, valid = frames.embeddings_to_matrix(df["emb"])
    with pytest.raises(TypeError, match="Implicit conversion"):  # the fake refuses as CuPy does
        np.asarray(valid, dtype=bool)
    out = _Doubler()._score_partition(df).to_pandas()
    assert out["score"].iloc[0] == 2.0 and np.isnan(out["score"].iloc[1]) and out["score"].iloc[2] == 6.0
