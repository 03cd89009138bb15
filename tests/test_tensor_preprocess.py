"""The tensor (GPU) preprocessing path, run on the CPU against the PIL reference path.

The same code runs on CUDA with nvJPEG; here torchvision decodes with libjpeg-turbo. What differs
from the reference is the resampling (torchvision's tensor bicubic vs PIL's), measured here.
"""
import logging

import numpy as np
import pytest
import torch
from factory import TINY_KWARGS, TINY_MODEL, image_bytes, write_img2dataset

from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.frames import embeddings_to_matrix
from nemo_aesthetic.image.embedders import TimmImageEmbedder
from nemo_aesthetic.engine import make_forward as _make_forward
from nemo_aesthetic.image.preprocess import ImageDecodeError, cpu_transform, make_preprocessor
from nemo_aesthetic.image.tensor_preprocess import make_tensor_preprocessor


@pytest.fixture(scope="module")
def tiny_model():
    import timm

    torch.manual_seed(0)
    return timm.create_model(TINY_MODEL, pretrained=False, **TINY_KWARGS).eval()


def _both(model, data):
    out = []
    for prep in (make_preprocessor(cpu_transform(model)), make_tensor_preprocessor(model, "cpu")):
        try:
            out.append(prep(data))
        except ImageDecodeError as exc:
            out.append(exc)
    return out


def test_tensor_path_matches_pil_path_on_real_images(tiny_model, testdata):
    files = sorted((testdata / "odd_images").iterdir())
    compared = 0
    for path in files:
        pil, tensor = _both(tiny_model, path.read_bytes())
        if isinstance(pil, Exception) or isinstance(tensor, Exception):
            # Undecodable for one means undecodable for both, with the same reason.
            assert type(pil) is type(tensor) and str(pil) == str(tensor), path.name
            continue
        assert tensor.shape == pil.shape == (3, 224, 224) and tensor.dtype == torch.float32
        diff = (tensor - pil).abs()
        # Normalised units (one 8-bit level is ~0.015): resampling differences only.
        assert diff.mean() < 0.005, (path.name, float(diff.mean()))
        assert diff.max() < 0.5, (path.name, float(diff.max()))
        compared += 1
    assert compared >= 10


def test_tensor_path_refuses_what_the_pil_path_refuses(tiny_model):
    from PIL import Image
    import io

    big = io.BytesIO()
    Image.new("RGB", (5000, 4000), "white").save(big, format="JPEG")
    pre = make_tensor_preprocessor(tiny_model, "cpu", max_pixels=10_000_000)
    with pytest.raises(ImageDecodeError, match="too large"):
        pre(big.getvalue())
    with pytest.raises(ImageDecodeError, match="not an image"):
        pre(b"<!DOCTYPE html><html>404</html>")
    with pytest.raises(ImageDecodeError, match="truncated"):
        pre(image_bytes(3, (200, 150))[:-400])


def test_embedder_decode_tensor_equals_pil_rows_and_close_embeddings(tmp_path, tiny_model):
    ckpt = tmp_path / "tiny.pth"
    torch.save(tiny_model.state_dict(), ckpt)
    expected = write_img2dataset(tmp_path / "ds", n_shards=2, rows_per_shard=6, image_size=(300, 200))
    results = {}
    for mode in ("pil", "tensor"):
        ds = ImageTextPairDataset.from_webdataset(str(tmp_path / "ds"))
        emb = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=str(ckpt), batch_size=4,
                                decode=mode)
        results[mode] = emb(ds).metadata.compute(scheduler="sync").sort_values("key").reset_index(drop=True)
    a, b = results["pil"], results["tensor"]
    assert a["key"].tolist() == b["key"].tolist()
    assert a["error"].fillna("").tolist() == b["error"].fillna("").tolist()
    (ea, va), (eb, vb) = embeddings_to_matrix(a["image_embedding"]), embeddings_to_matrix(b["image_embedding"])
    assert (va == vb).all() and va.sum() == sum(e["status"] == "success" for e in expected.values())
    cosine = (ea[va] * eb[vb]).sum(axis=1)
    assert cosine.min() > 0.999, cosine
    with pytest.raises(ValueError, match="decode"):
        TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, decode="nvjpeg")


class _GpuMemoryBound(torch.nn.Module):
    """Stands in for a GPU that runs out of memory above 2 images per batch (no GPU here)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 4 * 4, 8)
        self.batch_sizes = []

    def forward(self, x):
        self.batch_sizes.append(len(x))
        if len(x) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated: this machine has no GPU)")
        return self.proj(x.flatten(1))


def test_out_of_memory_batch_is_halved_and_retried_not_lost(caplog):
    torch.manual_seed(0)
    model = _GpuMemoryBound()
    batch = torch.randn(7, 3, 4, 4)
    forward = _make_forward(model, [("s", lambda e: e.sum(dim=1))], "cpu", normalize=True, autocast=False)
    with caplog.at_level(logging.WARNING, logger="nemo_aesthetic"):
        emb, scores = forward(batch)
    expected = torch.nn.functional.normalize(model.proj(batch.flatten(1)), dim=-1).detach().numpy()
    np.testing.assert_allclose(emb, expected, atol=1e-6)
    np.testing.assert_allclose(scores["s"], expected.sum(axis=1), atol=1e-5)
    assert max(n for n in model.batch_sizes if n <= 2) == 2 and "out of GPU memory" in caplog.text
