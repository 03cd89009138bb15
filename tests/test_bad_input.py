"""A corpus of bad input: every row comes out exactly once, scored or with a reason.

Each test writes real files (tars, Parquet, images made with PIL or taken from
``testdata/odd_images`` and ``testdata/upstream_shards``), scores them with the tiny CLIP-family
model and the real aesthetic head, and checks the outcome of every input row:

* scored: embedding and score present, ``error`` null;
* flagged: null embedding and score, a reason in ``error`` that says what went wrong.

Rows are identified by a ``rid`` column written into every Parquet row (never null), so a row
with a null id, or a result written into the wrong row, is still caught. Scored odd formats are
compared with a direct computation (PIL open -> RGB -> timm's transform -> model), so "scored"
also means "scored from the right pixels".

Documented outcomes checked here (see ``image/preprocess.py``, ``image/embedders/base.py``,
``datasets/shards.py`` and the README):

* decoding goes by content: PNG, WebP, GIF bytes named ``.jpg`` are scored; HTML, random bytes,
  0 bytes, truncated JPEG, broken PNG are flagged;
* grayscale, CMYK, palette+transparency, RGBA, 16-bit PNG are converted to RGB and scored;
* a 1x1 image is scored (upscaled to 224); a 10000x10 image is scored (resized to 224x224000,
  then centre-cropped); a 10000x1 image is refused "image too large to resize": its resize alone
  would hold 224x2240000 pixels (more than ``max(max_pixels, 89478485)``);
* an image whose header claims more than ``max_pixels`` pixels is refused "too large" without
  being decoded;
* EXIF orientation is not applied;
* the tensor decode path (``decode="tensor"``, the GPU path, run on the CPU here) gives every
  image case the same outcome;
* a tar that breaks part-way: samples before the break are scored, rows after it get the tar
  error (``cannot read NNNNN.tar: ...``); a tar that is not a tar flags all its rows the same way;
  a tar cut exactly at a member boundary reads as a shorter tar (as in GNU tar and webdataset):
  the rows after the cut say ``no sample for this key in NNNNN.tar``;
* a Parquet without its tar: rows flagged ``shard NNNNN has no tar file``; a tar without its
  Parquet, or an unreadable Parquet: an error naming the file.
"""
from __future__ import annotations

import gzip
import io
import logging
import os
import shutil
import struct
import tarfile
import zlib

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from factory import TINY_KWARGS, TINY_MODEL, add_member, image_bytes
from test_hardening_input import POSTSCRIPT, end_of_tar, gnu_sparse_member, tar_bytes, tar_gz_with_huge_member
from PIL import Image, ImageFile, ImageOps

from nemo_aesthetic import frames
from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.image.classifiers import AestheticClassifier
from nemo_aesthetic.image.embedders import TimmImageEmbedder

ATOL = 2e-5


# =========================================================================== fixtures and helpers


class Reference:
    """The reference path by hand: PIL open -> RGB -> timm transform -> model -> L2 normalise."""

    def __init__(self, checkpoint):
        import timm
        import timm.data

        self.model = timm.create_model(TINY_MODEL, pretrained=False, **TINY_KWARGS)
        self.model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        self.model.eval()
        config = timm.data.resolve_data_config({}, model=self.model)
        self.transform = timm.data.create_transform(**config, is_training=False)

    def image(self, image: Image.Image) -> np.ndarray:
        with torch.inference_mode():
            x = self.transform(image.convert("RGB")).unsqueeze(0)
            return torch.nn.functional.normalize(self.model(x), dim=-1)[0].numpy()

    def __call__(self, data: bytes) -> np.ndarray:
        return self.image(Image.open(io.BytesIO(data)))


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    return Reference(tiny_checkpoint)


@pytest.fixture
def make_embedder(tiny_checkpoint, aesthetic_weights):
    def make(**kwargs):
        kwargs.setdefault("batch_size", 3)
        kwargs.setdefault("num_threads_per_worker", 2)
        return TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=tiny_checkpoint,
                                 classifiers=[AestheticClassifier(model_path=aesthetic_weights)], **kwargs)

    return make


@pytest.fixture
def embed(make_embedder):
    """``embed(root, **embedder_kwargs)`` -> the scored metadata, computed synchronously."""

    def run(root, id_col="key", **kwargs):
        ds = ImageTextPairDataset.from_webdataset(str(root), id_col=id_col)
        with dask.config.set(scheduler="sync"):
            return make_embedder(**kwargs)(ds).metadata.compute()

    return run


def odd(testdata, name: str) -> bytes:
    return (testdata / "odd_images" / name).read_bytes()


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of one colour: a few KB that claim ``width*height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def strip_exif(jpeg: bytes) -> bytes:
    """The same JPEG with its APP1 Exif segment removed (scan data untouched)."""
    assert jpeg[:2] == b"\xff\xd8"
    out, i = [jpeg[:2]], 2
    while True:
        marker = jpeg[i:i + 2]
        assert marker[0] == 0xFF, "not at a JPEG marker"
        if marker[1] == 0xDA:  # start of scan: the rest is image data
            out.append(jpeg[i:])
            return b"".join(out)
        length = struct.unpack(">H", jpeg[i + 2:i + 4])[0]
        segment = jpeg[i:i + 2 + length]
        if not (marker == b"\xff\xe1" and segment[4:10] == b"Exif\0\0"):
            out.append(segment)
        i += 2 + length


def row(shard: str, key, status: str = "success", caption: str | None = None, **extra) -> dict:
    """A metadata row shaped like img2dataset's, with a never-null ``rid`` to find it by."""
    failed = status != "success"
    out = {"rid": f"{shard}/{key}", "key": key, "caption": caption if caption is not None else f"caption {key}",
           "status": status, "error_message": "HTTP Error 404: Not Found" if failed else None}
    out.update(extra)
    return out


def write_tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            add_member(tar, name, data)


#: The metadata columns the tests write (string ids; the integer-id test writes its own).
SCHEMA = pa.schema([(name, pa.string()) for name in ("rid", "key", "caption", "status", "error_message")])


def write_parquet(path, rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)


def sample_members(key: str, image: bytes | None, ext: str = "jpg", caption: bytes | None = None) -> list:
    members = [] if image is None else [(f"{key}.{ext}", image)]
    return members + [(f"{key}.txt", caption if caption is not None else f"caption {key}".encode()),
                      (f"{key}.json", b'{"key": "%s"}' % key.encode())]


def check_rows(df: pd.DataFrame, expect: dict[str, str | None]) -> dict[str, pd.Series]:
    """Every expected ``rid`` exactly once, no other row; ``None``: scored, else the reason's text."""
    rids = df["rid"].tolist()
    assert sorted(rids) == sorted(expect), "rows in != rows out"
    by_rid = {r["rid"]: r for _, r in df.iterrows()}
    for rid, reason in expect.items():
        r = by_rid[rid]
        error = r["error"]
        if reason is None:
            assert pd.isna(error), (rid, error)
            assert np.isfinite(r["aesthetic_score"]), rid
        else:
            assert isinstance(error, str) and reason in error, (rid, reason, error)
            assert pd.isna(r["aesthetic_score"]), rid
    # scored <=> embedding present <=> no error, for every row
    _, valid = frames.embeddings_to_matrix(df["image_embedding"])
    assert (valid == df["aesthetic_score"].notna().to_numpy()).all()
    assert (valid == df["error"].isna().to_numpy()).all()
    return by_rid


def embedding_of(r) -> np.ndarray:
    return np.asarray(r["image_embedding"], dtype=np.float32)


# =========================================================================== per-row image cases
def _gray_16bit_png() -> bytes:
    ramp = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)
    image = Image.fromarray(ramp)  # mode I;16
    assert image.mode == "I;16"
    return encode(image, "PNG")


def _exif_transposed(testdata) -> bytes:
    return encode(ImageOps.exif_transpose(Image.open(io.BytesIO(odd(testdata, "hopper_orientation_6.jpg")))),
                  "PNG")


#: name -> (bytes builder, expected outcome: None = scored, else a substring of the reason).
#: Every image is stored as ``<key>.jpg`` whatever its real format, as img2dataset does.
IMAGE_CASES = {
    "truncated_jpeg": (lambda td: odd(td, "truncated_jpeg.jpg"), "image file is truncated"),
    "jpeg_cut_in_half": (lambda td: image_bytes(7)[: len(image_bytes(7)) // 2], "image file is truncated"),
    "zero_bytes": (lambda td: b"", "empty image file (0 bytes)"),
    "random_bytes": (lambda td: np.random.default_rng(5).bytes(3000), "not an image PIL can read"),
    "html_error_page": (lambda td: b"<!DOCTYPE html><html><head><title>404 Not Found</title></head>"
                        b"<body><h1>Not Found</h1></body></html>\n", "not an image PIL can read (starts with b'<!DOCTYPE"),
    "broken_png": (lambda td: odd(td, "broken.png"), "not an image PIL can read"),
    "png_named_jpg": (lambda td: odd(td, "hopper.png"), None),
    "webp_named_jpg": (lambda td: odd(td, "hopper.webp"), None),
    "gif_named_jpg": (lambda td: odd(td, "hopper.gif"), None),
    "grayscale_jpeg": (lambda td: odd(td, "hopper_gray.jpg"), None),
    "cmyk_jpeg": (lambda td: odd(td, "pil_sample_cmyk.jpg"), None),
    "palette_png_transparency": (lambda td: odd(td, "p_trns_single.png"), None),
    "rgba_png": (lambda td: odd(td, "transparent.png"), None),
    "rgba_webp": (lambda td: odd(td, "transparent.webp"), None),
    "16bit_png_rgba": (lambda td: odd(td, "mode_16bit.png"), None),
    "16bit_png_gray": (lambda td: _gray_16bit_png(), None),
    "1x1_png": (lambda td: image_bytes(3, (1, 1), fmt="PNG"), None),
    "1x1_jpeg": (lambda td: image_bytes(3, (1, 1)), None),
    "10000x10_png": (lambda td: image_bytes(4, (10000, 10), fmt="PNG"), None),
    "10000x1_png": (lambda td: image_bytes(4, (10000, 1), fmt="PNG"), "too large"),
    "bomb_12000x12000_png": (lambda td: png_claiming(12000, 12000), "image too large: 12000x12000"),
    "bomb_20000x20000_png": (lambda td: png_claiming(20000, 20000), "image too large"),
    # PostScript would make Pillow start Ghostscript: only JPEG/PNG/WEBP/GIF/BMP/TIFF are opened
    "postscript_named_jpg": (lambda td: POSTSCRIPT, "not an image PIL can read (starts with b'%!PS"),
}


def write_case_dataset(root, image: bytes) -> dict[str, str | None]:
    """One shard: a good JPEG, the case under test, a failed download; returns rid -> expectation."""
    os.makedirs(root, exist_ok=True)
    good, case, failed = "000000000", "000000001", "000000002"
    write_tar(root / "00000.tar", sample_members(case, image) + sample_members(good, image_bytes(1)))
    write_parquet(root / "00000.parquet", [row("00000", case), row("00000", failed, "failed_to_download"),
                                           row("00000", good)])
    return {f"00000/{good}": None, f"00000/{failed}": "img2dataset status failed_to_download"}


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_image_case(case, tmp_path, testdata, embed, reference):
    build, reason = IMAGE_CASES[case]
    data = build(testdata)
    expect = write_case_dataset(tmp_path / "ds", data)
    expect["00000/000000001"] = reason
    by_rid = check_rows(embed(tmp_path / "ds", decode="pil"), expect)
    scored = by_rid["00000/000000001"]
    if reason is None:  # scored from the pixels PIL decodes from the content, whatever the name
        np.testing.assert_allclose(embedding_of(scored), reference(data), rtol=0, atol=ATOL)
    np.testing.assert_allclose(embedding_of(by_rid["00000/000000000"]), reference(image_bytes(1)), rtol=0, atol=ATOL)


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_image_case_on_the_tensor_decode_path(case, tmp_path, testdata, embed):
    """``decode="tensor"`` (the GPU path, run here on the CPU) gives every case the same outcome
    as the PIL path: JPEGs it cannot take fall back to PIL, which gives the reason."""
    build, reason = IMAGE_CASES[case]
    expect = write_case_dataset(tmp_path / "ds", build(testdata))
    expect["00000/000000001"] = reason
    check_rows(embed(tmp_path / "ds", decode="tensor"), expect)


def test_decompression_bomb_is_refused_before_decoding(tmp_path, embed, monkeypatch):
    """The header's size is checked before any pixel is decoded: no load() of the bomb happens."""
    loaded = []
    original = ImageFile.ImageFile.load

    def spy(self):
        loaded.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    bomb = png_claiming(12000, 12000)
    assert len(bomb) < 100_000  # tiny file, 144 Mpixel claim
    expect = write_case_dataset(tmp_path / "ds", bomb)
    expect["00000/000000001"] = "image too large: 12000x12000 = 144000000 pixels > limit 89478485"
    check_rows(embed(tmp_path / "ds"), expect)
    assert (96, 64) in loaded  # the spy sees the good image being decoded ...
    assert (12000, 12000) not in loaded  # ... and never the bomb


def test_max_pixels_of_the_embedder(tmp_path, embed, testdata):
    """``max_pixels=`` moves the limit: 128x128 (16384 px) is refused at 10000, 96x64 is not."""
    root = tmp_path / "ds"
    os.makedirs(root)
    write_tar(root / "00000.tar", sample_members("big", odd(testdata, "hopper.png"))
              + sample_members("small", image_bytes(2)))  # 96x64 = 6144
    write_parquet(root / "00000.parquet", [row("00000", "big"), row("00000", "small")])
    expect = {"00000/big": "image too large: 128x128 = 16384 pixels > limit 10000", "00000/small": None}
    check_rows(embed(root, max_pixels=10_000), expect)
    # and the default limit scores both
    check_rows(embed(root), {"00000/big": None, "00000/small": None})


def test_exif_orientation_is_not_applied(tmp_path, embed, testdata, reference, tiny_checkpoint):
    """Orientation 6 is ignored, as in the reference: same embedding as the same JPEG with its EXIF
    segment removed, and not the embedding of the upright picture."""
    rotated_jpeg = odd(testdata, "hopper_orientation_6.jpg")
    assert Image.open(io.BytesIO(rotated_jpeg)).getexif().get(0x0112) == 6
    plain_jpeg = strip_exif(rotated_jpeg)
    assert Image.open(io.BytesIO(plain_jpeg)).getexif().get(0x0112) is None
    pixels = np.asarray(Image.open(io.BytesIO(rotated_jpeg)).convert("RGB"))
    np.testing.assert_array_equal(pixels, np.asarray(Image.open(io.BytesIO(plain_jpeg)).convert("RGB")))
    upright = _exif_transposed(testdata)  # what applying the tag would give

    # the library's own preprocessing: identical tensors with and without the tag
    emb = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=tiny_checkpoint)
    preprocess = emb.load_preprocessor(emb.load_embedding_model("cpu"), "cpu")
    assert torch.equal(preprocess(rotated_jpeg), preprocess(plain_jpeg))
    assert not torch.allclose(preprocess(rotated_jpeg), preprocess(upright), atol=0.1)

    root = tmp_path / "ds"
    os.makedirs(root)
    write_tar(root / "00000.tar", sample_members("exif", rotated_jpeg) + sample_members("noexif", plain_jpeg)
              + sample_members("upright", upright, ext="png"))
    write_parquet(root / "00000.parquet", [row("00000", k) for k in ("exif", "noexif", "upright")])
    by_rid = check_rows(embed(root), {"00000/exif": None, "00000/noexif": None, "00000/upright": None})
    with_tag, without_tag = embedding_of(by_rid["00000/exif"]), embedding_of(by_rid["00000/noexif"])
    np.testing.assert_allclose(with_tag, without_tag, rtol=0, atol=1e-6)
    np.testing.assert_allclose(with_tag, reference(plain_jpeg), rtol=0, atol=ATOL)
    # the check can fail: the upright picture embeds differently
    assert np.abs(with_tag - embedding_of(by_rid["00000/upright"])).max() > 1e-3
    np.testing.assert_allclose(embedding_of(by_rid["00000/upright"]), reference(upright), rtol=0, atol=ATOL)


# =========================================================================== per-row sample cases
def test_duplicate_member_names_in_one_tar_flag_the_row(tmp_path, embed):
    root = tmp_path / "ds"
    os.makedirs(root)
    write_tar(root / "00000.tar", [("dup.jpg", image_bytes(1)), ("dup.jpg", image_bytes(2)), ("dup.txt", b"x")]
              + sample_members("ok", image_bytes(3)))
    write_parquet(root / "00000.parquet", [row("00000", "dup"), row("00000", "ok")])
    check_rows(embed(root), {"00000/dup": "duplicate sample for this key in 00000.tar", "00000/ok": None})


def test_sample_without_an_image_member_is_flagged(tmp_path, embed):
    root = tmp_path / "ds"
    os.makedirs(root)
    write_tar(root / "00000.tar", sample_members("noimg", None) + sample_members("ok", image_bytes(3)))
    write_parquet(root / "00000.parquet", [row("00000", "noimg"), row("00000", "ok")])
    check_rows(embed(root), {"00000/noimg": "sample has no image member (has: txt, json)", "00000/ok": None})


def test_image_without_a_metadata_row_is_counted_not_scored(tmp_path, embed, caplog, reference):
    """``b`` has a sample but no row; it sorts between ``a`` and ``c``, whose rows keep their own images."""
    root = tmp_path / "ds"
    os.makedirs(root)
    write_tar(root / "00000.tar", sample_members("a", image_bytes(1)) + sample_members("b", image_bytes(2))
              + sample_members("c", image_bytes(3)))
    write_parquet(root / "00000.parquet", [row("00000", "a"), row("00000", "c")])
    with caplog.at_level(logging.WARNING, logger="nemo_aesthetic"):
        df = embed(root)
    by_rid = check_rows(df, {"00000/a": None, "00000/c": None})
    assert len(df) == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert any("1 tar sample(s) have no metadata row" in w and "'b'" in w for w in warnings), warnings
    # each row holds its own picture, not b's
    for key, seed in (("a", 1), ("c", 3)):
        np.testing.assert_allclose(embedding_of(by_rid[f"00000/{key}"]), reference(image_bytes(seed)),
                                   rtol=0, atol=ATOL)


def test_non_utf8_caption_bytes(tmp_path, embed):
    root = tmp_path / "ds"
    os.makedirs(root)
    caption = "café – 東京"
    write_tar(root / "00000.tar", sample_members("latin1", image_bytes(1), caption=b"caf\xe9 \xff\xfe broken")
              + sample_members("ok", image_bytes(2)))
    write_parquet(root / "00000.parquet", [row("00000", "latin1", caption=caption), row("00000", "ok")])
    by_rid = check_rows(embed(root), {"00000/latin1": None, "00000/ok": None})
    assert by_rid["00000/latin1"]["caption"] == caption


# =========================================================================== per-shard cases
def _six_sample_tar(path) -> list[tuple[str, int, int]]:
    """Samples k0..k5 (jpg, txt, json); returns each member's (name, header offset, data offset)."""
    members = [m for i in range(6) for m in sample_members(f"k{i}", image_bytes(i))]
    write_tar(path, members)
    with tarfile.open(path) as tar:
        return [(m.name, m.offset, m.offset_data) for m in tar]


def _cut_tar(path, layout, how: str) -> None:
    offsets = {name: (header, data) for name, header, data in layout}
    header, data = offsets["k3.jpg"]
    raw = bytearray(path.read_bytes())
    if how == "inside_image_data":
        raw = raw[: data + 300]
    elif how == "inside_header":
        raw = raw[: header + 100]
    elif how == "garbage_header":  # the header block of k3.jpg overwritten in place, the rest intact
        raw[header:header + 512] = np.random.default_rng(1).bytes(512)
    else:
        raise AssertionError(how)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["inside_image_data", "inside_header", "garbage_header"])
def test_truncated_tar_scores_before_the_break_and_flags_after(tmp_path, embed, how):
    root = tmp_path / "ds"
    os.makedirs(root)
    layout = _six_sample_tar(root / "00000.tar")
    _cut_tar(root / "00000.tar", layout, how)
    write_parquet(root / "00000.parquet", [row("00000", f"k{i}") for i in range(6)])
    expect = {f"00000/k{i}": None for i in range(3)}
    expect.update({f"00000/k{i}": "cannot read 00000.tar" for i in range(3, 6)})
    check_rows(embed(root), expect)


def test_tar_cut_exactly_at_a_member_boundary(tmp_path, embed):
    """A tar cut at a 512-byte boundary with no end-of-archive blocks reads as a shorter tar
    (tarfile, GNU tar and webdataset all accept it): the rows after the cut are flagged as having
    no sample, still one row each."""
    root = tmp_path / "ds"
    os.makedirs(root)
    layout = _six_sample_tar(root / "00000.tar")
    header = dict((n, h) for n, h, _ in layout)["k3.jpg"]
    (root / "00000.tar").write_bytes((root / "00000.tar").read_bytes()[:header])
    write_parquet(root / "00000.parquet", [row("00000", f"k{i}") for i in range(6)])
    expect = {f"00000/k{i}": None for i in range(3)}
    expect.update({f"00000/k{i}": "no sample for this key in 00000.tar" for i in range(3, 6)})
    check_rows(embed(root), expect)


@pytest.mark.parametrize("content", ["random", "html", "zero_bytes"])
def test_tar_that_is_not_a_tar_flags_all_its_rows(tmp_path, embed, content):
    """Every row of the shard gets the tar's error, except the failed download's row, which keeps
    img2dataset's own reason: it never had an image, whatever the tar's state."""
    root = tmp_path / "ds"
    os.makedirs(root)
    write_tar(root / "00000.tar", sample_members("a", image_bytes(1)))
    write_parquet(root / "00000.parquet", [row("00000", "a")])
    (root / "00001.tar").write_bytes({"random": np.random.default_rng(2).bytes(20480),
                                      "html": b"<html><body>502 Bad Gateway</body></html>",
                                      "zero_bytes": b""}[content])
    write_parquet(root / "00001.parquet", [row("00001", "b"), row("00001", "c"),
                                           row("00001", "d", "failed_to_download")])
    expect = {"00000/a": None, "00001/b": "cannot read 00001.tar", "00001/c": "cannot read 00001.tar",
              "00001/d": "img2dataset status failed_to_download"}
    check_rows(embed(root), expect)


def test_parquet_without_its_tar_flags_rows_no_tar(tmp_path, embed):
    root = tmp_path / "ds"
    os.makedirs(root)
    write_tar(root / "00000.tar", sample_members("a", image_bytes(1)))
    write_parquet(root / "00000.parquet", [row("00000", "a")])
    write_parquet(root / "00001.parquet", [row("00001", "b"), row("00001", "c")])
    check_rows(embed(root), {"00000/a": None, "00001/b": "shard 00001 has no tar file",
                             "00001/c": "shard 00001 has no tar file"})


def test_tar_without_its_parquet_is_an_error_naming_it(tmp_path):
    root = tmp_path / "ds"
    os.makedirs(root)
    write_tar(root / "00000.tar", sample_members("a", image_bytes(1)))
    write_parquet(root / "00000.parquet", [row("00000", "a")])
    write_tar(root / "00001.tar", sample_members("b", image_bytes(2)))
    with pytest.raises(ValueError, match=r"00001\.tar"):
        ImageTextPairDataset.from_webdataset(str(root))


def test_unreadable_later_parquet_fails_before_any_work_naming_it(tmp_path, embed):
    root = tmp_path / "ds"
    os.makedirs(root)
    for shard, key in (("00000", "a"), ("00001", "b")):
        write_tar(root / f"{shard}.tar", sample_members(key, image_bytes(1)))
        write_parquet(root / f"{shard}.parquet", [row(shard, key)])
    good = (root / "00001.parquet").read_bytes()
    (root / "00001.parquet").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"cannot read metadata file .*00001\.parquet"):
        embed(root)


def test_empty_shard(tmp_path, embed):
    root = tmp_path / "ds"
    os.makedirs(root)
    write_tar(root / "00000.tar", [])
    write_parquet(root / "00000.parquet", [])
    write_tar(root / "00001.tar", sample_members("a", image_bytes(1)))
    write_parquet(root / "00001.parquet", [row("00001", "a")])
    check_rows(embed(root), {"00001/a": None})
    # only the empty shard
    os.remove(root / "00001.tar")
    os.remove(root / "00001.parquet")
    df = embed(root)
    assert len(df) == 0 and {"image_embedding", "aesthetic_score", "error"} <= set(df.columns)


def test_non_integer_keys_score_and_to_webdataset(tmp_path, embed):
    root = tmp_path / "ds"
    os.makedirs(root)
    keys = ["a_1", "a_10", "b-2", "123_456", "x.y"]  # "x.y" splits as key "x", ext "y.jpg": no image
    members = [m for i, k in enumerate(keys) for m in sample_members(k, image_bytes(i))]
    write_tar(root / "00000.tar", members)
    write_parquet(root / "00000.parquet", [row("00000", k) for k in keys])
    check_rows(embed(root), {"00000/a_1": None, "00000/a_10": None, "00000/b-2": None, "00000/123_456": None,
                             "00000/x.y": "no sample for this key in 00000.tar"})
    scored = ImageTextPairDataset.from_webdataset(str(root))
    scored.metadata = scored.metadata.map_partitions(
        lambda d: d.assign(keep=d["key"].isin(["a_1", "b-2", "123_456"])),
        meta=scored.metadata._meta.assign(keep=pd.Series([], dtype=bool)))
    with dask.config.set(scheduler="sync"):
        summary = scored.to_webdataset(str(tmp_path / "out"), "keep", samples_per_shard=2, old_id_col="old_key")
    assert summary["written"] == 3 and summary["missing"] == []
    out = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "out").glob("*.parquet"))])
    assert sorted(out.old_key) == ["123_456", "a_1", "b-2"]


def test_id_column_with_nulls_flags_those_rows(tmp_path, embed):
    root = tmp_path / "ds"
    os.makedirs(root)
    write_tar(root / "00000.tar", sample_members("000000000", image_bytes(1))
              + sample_members("000000001", image_bytes(2)))
    write_parquet(root / "00000.parquet", [row("00000", "000000000"), row("00000", None, caption="orphan"),
                                           row("00000", "000000001")])
    by_rid = check_rows(embed(root), {"00000/000000000": None, "00000/None": "missing id",
                                      "00000/000000001": None})
    assert by_rid["00000/None"]["caption"] == "orphan"


@pytest.mark.parametrize("writer", ["pandas", "arrow"])
def test_integer_id_column_with_nulls(tmp_path, embed, writer):
    """Integer ids with a null: pandas' own file restores Int64, but a Parquet written without
    pandas metadata (pyarrow, Spark, our own save_metadata) reads back as float64 (7.0, NaN). The
    ids must still match the zero-padded tar keys, and the null row is flagged."""
    root = tmp_path / "ds"
    os.makedirs(root)
    write_tar(root / "00000.tar", sample_members("000000007", image_bytes(1))
              + sample_members("000000009", image_bytes(2)))
    rows = [row("00000", 7), row("00000", None), row("00000", 9)]
    if writer == "pandas":
        pd.DataFrame(rows).astype({"key": "Int64"}).to_parquet(root / "00000.parquet", index=False)
    else:
        schema = SCHEMA.set(SCHEMA.get_field_index("key"), pa.field("key", pa.int64()))
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "00000.parquet")
    check_rows(embed(root), {"00000/7": None, "00000/None": "missing id", "00000/9": None})


def test_gzip_compressed_tar(tmp_path, embed):
    root = tmp_path / "ds"
    os.makedirs(root)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in sample_members("a", image_bytes(1)) + sample_members("b", image_bytes(2)):
            add_member(tar, name, data)
    (root / "00000.tar.gz").write_bytes(gzip.compress(buf.getvalue()))
    write_parquet(root / "00000.parquet", [row("00000", "a"), row("00000", "b"), row("00000", "c")])
    check_rows(embed(root), {"00000/a": None, "00000/b": None,
                             "00000/c": "no sample for this key in 00000.tar.gz"})


def test_upstream_webdataset_gzip_shard(tmp_path, embed, testdata):
    """webdataset's own mnist sample (.tgz, 28x28 grayscale PNG + .cls, no captions)."""
    root = tmp_path / "ds"
    os.makedirs(root)
    src = testdata / "upstream_shards" / "webdataset_mnist_sample.tgz"
    shutil.copy(src, root / "mnist.tgz")
    with tarfile.open(src) as tar:
        keys = sorted({m.name.split(".", 1)[0] for m in tar if m.isfile()})
    assert len(keys) > 10
    write_parquet(root / "mnist.parquet", [row("mnist", k) for k in keys])
    check_rows(embed(root), {f"mnist/{k}": None for k in keys})


def test_macos_resource_fork_members_are_ignored(tmp_path, embed, testdata, reference):
    root = tmp_path / "ds"
    os.makedirs(root)
    src = testdata / "upstream_shards" / "nemo_curator_macos_members_00000.tar"
    shutil.copy(src, root / "00000.tar")
    with tarfile.open(src) as tar:
        names = [m.name for m in tar if m.isfile()]
        image = tar.extractfile("0.jpg").read()
    assert "._0.jpg" in names
    write_parquet(root / "00000.parquet", [row("00000", "0")])
    by_rid = check_rows(embed(root), {"00000/0": None})
    np.testing.assert_allclose(embedding_of(by_rid["00000/0"]), reference(image), rtol=0, atol=ATOL)


# =========================================================================== the whole corpus at once
def build_corpus(root, testdata) -> tuple[dict[str, str | None], int]:
    """Everything above that fits in one dataset; returns (rid -> expectation, inputs tried)."""
    os.makedirs(root)
    expect: dict[str, str | None] = {}
    tried = 0

    # 00000: one row per image case, plus the per-row sample cases
    members, rows = [], []
    for i, (case, (build, reason)) in enumerate(sorted(IMAGE_CASES.items())):
        key = f"00000{i:04d}"
        members += sample_members(key, build(testdata))
        rows.append(row("00000", key))
        expect[f"00000/{key}"] = reason
        tried += 1
    rotated = odd(testdata, "hopper_orientation_6.jpg")
    extra = {"exif": (rotated, None), "noexif": (strip_exif(rotated), None)}
    for key, (data, reason) in extra.items():
        members += sample_members(key, data)
        rows.append(row("00000", key))
        expect[f"00000/{key}"] = reason
        tried += 1
    members += [("dup.jpg", image_bytes(1)), ("dup.jpg", image_bytes(2))]
    rows.append(row("00000", "dup"))
    expect["00000/dup"] = "duplicate sample"
    members += sample_members("noimg", None)
    rows.append(row("00000", "noimg"))
    expect["00000/noimg"] = "sample has no image member"
    members += sample_members("norow", image_bytes(9))  # counted, no row
    members += sample_members("latin1", image_bytes(10), caption=b"caf\xe9 \xff")
    rows.append(row("00000", "latin1"))
    expect["00000/latin1"] = None
    rows.append(row("00000", None))
    expect["00000/None"] = "missing id"
    rows.append(row("00000", "failed", "failed_to_download"))
    expect["00000/failed"] = "img2dataset status failed_to_download"
    tried += 6
    write_tar(root / "00000.tar", members)
    write_parquet(root / "00000.parquet", rows)

    # 00001: truncated inside an image; 00002: garbage header in the middle
    for shard, how in (("00001", "inside_image_data"), ("00002", "garbage_header")):
        layout = _six_sample_tar(root / f"{shard}.tar")
        _cut_tar(root / f"{shard}.tar", layout, how)
        write_parquet(root / f"{shard}.parquet", [row(shard, f"k{i}") for i in range(6)])
        expect.update({f"{shard}/k{i}": None for i in range(3)})
        expect.update({f"{shard}/k{i}": f"cannot read {shard}.tar" for i in range(3, 6)})
        tried += 1
    # 00003: not a tar
    (root / "00003.tar").write_bytes(b"<html><body>502 Bad Gateway</body></html>")
    write_parquet(root / "00003.parquet", [row("00003", "a"), row("00003", "b")])
    expect.update({"00003/a": "cannot read 00003.tar", "00003/b": "cannot read 00003.tar"})
    tried += 1
    # 00004: parquet without tar
    write_parquet(root / "00004.parquet", [row("00004", "a")])
    expect["00004/a"] = "shard 00004 has no tar file"
    tried += 1
    # 00005: empty shard
    write_tar(root / "00005.tar", [])
    write_parquet(root / "00005.parquet", [])
    tried += 1
    # 00006: gzip-compressed tar
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in sample_members("g1", image_bytes(11)):
            add_member(tar, name, data)
    (root / "00006.tar.gz").write_bytes(gzip.compress(buf.getvalue()))
    write_parquet(root / "00006.parquet", [row("00006", "g1")])
    expect["00006/g1"] = None
    tried += 1
    # 00007: non-integer keys
    keys = ["a_1", "b-2", "123_456"]
    write_tar(root / "00007.tar", [m for i, k in enumerate(keys) for m in sample_members(k, image_bytes(20 + i))])
    write_parquet(root / "00007.parquet", [row("00007", k) for k in keys])
    expect.update({f"00007/{k}": None for k in keys})
    tried += 1
    # 00008: a GNU sparse member declaring 8 GiB in a 2 kB tar (refused unread)
    body = (tar_bytes(sample_members("s1", None)) + gnu_sparse_member("s1.jpg", 8 * 2**30)
            + tar_bytes(sample_members("s2", image_bytes(30))))
    (root / "00008.tar").write_bytes(body + end_of_tar(len(body)))
    write_parquet(root / "00008.parquet", [row("00008", "s1"), row("00008", "s2")])
    expect.update({"00008/s1": "is a sparse file declaring 8589934592 bytes", "00008/s2": None})
    tried += 1
    # 00009: a .tar.gz whose member inflates past the per-sample limit (set to 8 MiB by the test)
    (root / "00009.tar.gz").write_bytes(tar_gz_with_huge_member(
        sample_members("z1", image_bytes(31)), "z2.jpg", 32 * 2**20, sample_members("z3", image_bytes(33))))
    write_parquet(root / "00009.parquet", [row("00009", k) for k in ("z1", "z2", "z3")])
    expect.update({"00009/z1": None, "00009/z2": "z2.jpg too large: 33554432 bytes", "00009/z3": None})
    tried += 1
    # 00010: schema drift: a column the other shards lack, a caption column typed null
    write_tar(root / "00010.tar", sample_members("d1", image_bytes(34)))
    pq.write_table(pa.table({"rid": ["00010/d1"], "key": ["d1"], "caption": pa.nulls(1), "status": ["success"],
                             "error_message": pa.nulls(1), "license": ["cc-by"]}), root / "00010.parquet")
    expect["00010/d1"] = None
    tried += 1
    # upstream shards: webdataset's mnist .tgz, NeMo Curator's shard with macOS ._* members
    shutil.copy(testdata / "upstream_shards" / "webdataset_mnist_sample.tgz", root / "mnist.tgz")
    with tarfile.open(root / "mnist.tgz") as tar:
        mnist = sorted({m.name.split(".", 1)[0] for m in tar if m.isfile()})
    write_parquet(root / "mnist.parquet", [row("mnist", k) for k in mnist])
    expect.update({f"mnist/{k}": None for k in mnist})
    shutil.copy(testdata / "upstream_shards" / "nemo_curator_macos_members_00000.tar", root / "macos.tar")
    write_parquet(root / "macos.parquet", [row("macos", "0")])
    expect["macos/0"] = None
    tried += 2
    # real img2dataset output stored without re-encoding (PNG/WEBP/GIF/CMYK/HTML/broken as .jpg)
    real = testdata / "img2dataset_output" / "disable_all_reencoding"
    for name in ("00000", "00001", "00002"):
        shutil.copy(real / f"{name}.tar", root / f"real{name}.tar")
        meta = pd.read_parquet(real / f"{name}.parquet")
        meta = meta.astype(object).where(meta.notna(), None)
        rows = [{"rid": f"real{name}/{r.key}", "key": r.key, "caption": r.caption, "status": r.status,
                 "error_message": r.error_message} for r in meta.itertuples()]
        write_parquet(root / f"real{name}.parquet", rows)
        for r in rows:  # failed downloads are flagged; the stored bodies are scored or flagged by content
            expect[r["rid"]] = "img2dataset status" if r["status"] != "success" else "?"
        tried += 1
    return expect, tried


def test_whole_corpus(tmp_path, embed, make_embedder, testdata, caplog, monkeypatch):
    """All of the above that fits in one dataset: rows in == rows out, scored + flagged == rows;
    then the scored rows written out with to_webdataset and read back."""
    monkeypatch.setenv("NEMO_AESTHETIC_MAX_MEMBER_BYTES", str(8 * 2**20))
    root = tmp_path / "corpus"
    expect, tried = build_corpus(root, testdata)
    rows_in = sum(len(pd.read_parquet(p)) for p in root.glob("*.parquet"))
    with caplog.at_level(logging.WARNING, logger="nemo_aesthetic"):
        df = embed(root)
    assert len(df) == rows_in == len(expect)
    assert sorted(df["rid"]) == sorted(expect)
    known = {rid: reason for rid, reason in expect.items() if reason != "?"}
    check_rows(df[df["rid"].isin(list(known))], known)
    _, valid = frames.embeddings_to_matrix(df["image_embedding"])
    scored = int(df["aesthetic_score"].notna().sum())
    flagged = int(df["error"].notna().sum())
    assert scored + flagged == len(df)
    assert scored == int(valid.sum())
    assert df["error"].dropna().str.len().gt(0).all()
    unmatched = [r.getMessage() for r in caplog.records if "no metadata row" in r.getMessage()]
    assert any("shard 00000: 1 tar sample(s)" in w and "norow" in w for w in unmatched), unmatched
    shards = len(list(root.glob("*.parquet")))

    # keep the scored rows: every one is written, except the samples a broken tar cut off (their
    # image was whole and scored, but a sample whose later members may be lost is not copied)
    ds = make_embedder()(ImageTextPairDataset.from_webdataset(str(root)))
    ds.metadata["keep"] = ~ds.metadata["aesthetic_score"].isna()
    with dask.config.set(scheduler="sync"):
        summary = ds.to_webdataset(str(tmp_path / "kept"), "keep", samples_per_shard=16, old_id_col="old_key")
        again = ImageTextPairDataset.from_webdataset(str(tmp_path / "kept")).metadata.compute()
    assert summary["kept_rows"] == scored
    assert sorted(summary["missing"]) == [("00001", "k2"), ("00002", "k2")]
    assert summary["written"] == len(again) == scored - 2
    kept_rids = set(df.loc[df["aesthetic_score"].notna(), "rid"]) - {"00001/k2", "00002/k2"}
    assert sorted(again["rid"]) == sorted(kept_rids)
    assert again["aesthetic_score"].notna().all()

    reasons = df["error"].dropna().str.replace(r"\(.*", "", regex=True).str.split(":").str[0].value_counts()
    print(f"\nbad-input corpus: {tried} inputs tried, {shards} shards, {len(df)} rows in, {len(df)} rows out, "
          f"{scored} scored, {flagged} flagged; {len(unmatched)} shard(s) had tar samples with no row "
          f"(counted, not scored); to_webdataset of the scored rows wrote {summary['written']} "
          f"({len(summary['missing'])} cut off by a broken tar)")
    print(reasons.to_string())
