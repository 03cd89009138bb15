"""Builds small real datasets for tests: real JPEGs (PIL), real tars, real Parquet.

``write_img2dataset`` writes shards shaped like img2dataset's output: a Parquet row for every
URL (failed downloads included, with no tar member), rows and members in a shuffled
"completion" order, zero-padded string keys, ``NNNNN_stats.json`` beside each shard.
"""
from __future__ import annotations

import io
import json
import os
import random
import tarfile

import numpy as np
import pandas as pd
from PIL import Image

#: A tiny model of the same architecture family as the real CLIP ViT-L/14 (768-d output).
#: Average pooling, because with the class token a depth-1 random model barely sees the picture
#: (an image and its 90-degree rotation differ by ~1e-5), so matching it by key would prove little;
#: averaged patch tokens differ by 1e-3..1e-1 between pictures.
TINY_MODEL = "vit_large_patch14_clip_quickgelu_224"
TINY_KWARGS = {"depth": 1, "embed_dim": 32, "num_heads": 2, "global_pool": "avg"}


def image_bytes(seed: int, size=(96, 64), fmt="JPEG", mode="RGB", noise: int = 40, quality: int | None = None
                ) -> bytes:
    """A deterministic, non-trivial picture (gradient + noise) encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * (seed % 7 + 1)) % 256, (yy * (seed % 5 + 2)) % 256, ((xx + yy) * 3) % 256], -1)
    pixels = np.clip(base + rng.integers(0, noise, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": quality} if quality is not None else {}))
    return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: int = 1_700_000_000) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    tar.addfile(info, io.BytesIO(data))


def write_img2dataset(root, n_shards: int = 3, rows_per_shard: int = 10, fail_every: int = 4,
                      seed: int = 0, image_size=(96, 64)) -> dict:
    """Write an img2dataset-shaped dataset; returns ``{key: {"shard", "status", "image"}}``."""
    os.makedirs(root, exist_ok=True)
    rnd = random.Random(seed)
    expected = {}
    for shard in range(n_shards):
        rows = []
        order = list(range(rows_per_shard))
        rnd.shuffle(order)  # completion order, not key order
        with tarfile.open(os.path.join(root, f"{shard:05d}.tar"), "w") as tar:
            for i in order:
                key = f"{shard:05d}{i:04d}"
                failed = fail_every and i % fail_every == fail_every - 1
                caption = None if i == 1 else f"caption {key}"
                row = {"url": f"http://127.0.0.1/{key}.jpg", "key": key, "caption": caption,
                       "status": "failed_to_download" if failed else "success",
                       "error_message": "HTTP Error 404: Not Found" if failed else None,
                       "width": None if failed else image_size[0], "height": None if failed else image_size[1]}
                rows.append(row)
                image = None
                if not failed:
                    image = image_bytes(shard * 1000 + i, image_size)
                    add_member(tar, f"{key}.jpg", image)
                    add_member(tar, f"{key}.txt", (caption or "").encode())
                    add_member(tar, f"{key}.json", json.dumps({"key": key, "caption": caption}).encode())
                expected[key] = {"shard": f"{shard:05d}", "status": row["status"], "image": image}
        pd.DataFrame(rows).to_parquet(os.path.join(root, f"{shard:05d}.parquet"), index=False)
        with open(os.path.join(root, f"{shard:05d}_stats.json"), "w") as f:
            json.dump({"count": rows_per_shard, "successes": sum(r["status"] == "success" for r in rows)}, f)
    return expected


def tar_members(path) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of every file member of a tar, in order."""
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


#: Where timm's hub loading looks for the OpenAI CLIP ViT-L/14 weights (the pretrained cfg's hf_hub_id).
CLIP_HUB_REPO = "timm/vit_large_patch14_clip_224.openai"


def populate_hf_cache(hub_dir, state_dict: dict, repo_id: str = CLIP_HUB_REPO, commit: str = "0" * 40) -> str:
    """Lay out ``state_dict`` in a Hugging Face hub cache exactly as a download would leave it.

    ``hub_dir`` is the cache directory (``$HF_HOME/hub``, or the ``cache_dir=`` handed to timm);
    with ``HF_HUB_OFFLINE=1`` timm's own ``pretrained=True`` loading then finds the weights there.
    Returns the path of the weights file.
    """
    from safetensors.torch import save_file

    repo = os.path.join(str(hub_dir), "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", commit)
    os.makedirs(snapshot, exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    path = os.path.join(snapshot, "model.safetensors")
    save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    return path


def model_loads(client) -> dict:
    """``{(worker address, cache key): loads}`` from the cluster's model-load events.

    A worker sends its load event on the same ordered stream as the finished task that made it,
    so once a computation's result is back its loads are on the scheduler.
    """
    from collections import Counter

    from nemo_aesthetic.distributed import LOAD_EVENTS

    return dict(Counter((msg["worker"], msg["key"]) for _, msg in client.get_events(LOAD_EVENTS)))


#: scikit-image's bundled colour photographs (public domain / CC0; shipped in its wheel).
WEB_PHOTO_SOURCES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                     "hubble_deep_field.jpg", "retina.jpg", "immunohistochemistry.png")
_PHOTO_CACHE: dict = {}


def _photo_source(name: str):
    if name not in _PHOTO_CACHE:
        from nemo_aesthetic.demo import skimage_data_dir

        path = os.path.join(skimage_data_dir(), name)
        _PHOTO_CACHE[name] = Image.open(path).convert("RGB") if os.path.exists(path) else None
    return _PHOTO_CACHE[name]


def web_photo(seed: int, progressive: bool = False, long_side: tuple[int, int] = (640, 1600)) -> bytes:
    """A real photograph re-encoded as a web JPEG: a random crop of one of scikit-image's photos,
    resized so its long side is in ``long_side`` (landscape or portrait), JPEG quality 75-95 with
    4:2:0, 4:2:2 or 4:4:4 chroma, baseline or ``progressive``. Deterministic in ``seed``."""
    rnd = random.Random(seed)
    sources = [s for s in (_photo_source(n) for n in WEB_PHOTO_SOURCES) if s is not None]
    src = sources[seed % len(sources)]
    w, h = src.size
    aspect = rnd.choice([4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3])
    cw = min(w, int(h * aspect))
    ch = int(cw / aspect)
    scale = rnd.uniform(0.6, 1.0)
    cw, ch = max(32, int(cw * scale)), max(32, int(ch * scale))
    x0, y0 = rnd.randint(0, w - cw), rnd.randint(0, h - ch)
    target = rnd.randint(*long_side)
    size = (target, max(1, round(target * ch / cw))) if cw >= ch else (max(1, round(target * cw / ch)), target)
    image = src.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=rnd.randint(75, 95), subsampling=rnd.choice([0, 1, 2]),
               progressive=progressive)
    return buf.getvalue()


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def bad_quant_table(jpeg: bytes) -> bytes:
    """A complete baseline JPEG whose first component names an undefined quantisation table:
    the header looks fine, the decoders refuse it."""
    data = bytearray(jpeg)
    sof = data.index(b"\xff\xc0")
    data[sof + 4 + 6 + 2] = 3
    return bytes(data)


def oversampled(jpeg: bytes) -> bytes:
    """A baseline JPEG whose markers are whole but whose sampling factors (4x4 on every component,
    48 blocks per MCU) no decoder takes: it reaches decode_jpeg, which refuses it (libjpeg:
    "Sampling factors too large for interleaved scan"), and PIL refuses it too."""
    data = bytearray(jpeg)
    sof = data.index(b"\xff\xc0")
    for i in range(data[sof + 9]):
        data[sof + 11 + 3 * i] = 0x44
    return bytes(data)


def corrupt_jpegs(jpeg: bytes) -> dict[str, bytes]:
    """``jpeg`` damaged in ways whose headers still parse (what nvJPEG may decode into garbage
    instead of refusing), by name."""
    sos = jpeg.index(b"\xff\xda")
    scan = sos + 2 + int.from_bytes(jpeg[sos + 2:sos + 4], "big")
    dht = jpeg.index(b"\xff\xc4")
    dht_end = dht + 2 + int.from_bytes(jpeg[dht + 2:dht + 4], "big")
    out = {}
    data = bytearray(jpeg)
    data[scan + 500:scan + 520] = b"\xff\x12" * 10
    out["stray_marker_in_scan"] = bytes(data)
    data = bytearray(jpeg)
    data[dht + 5:dht + 25] = b"\xff" * 20
    out["garbled_huffman_table"] = bytes(data)
    data = bytearray(jpeg)
    data[sos + 5] = 0x77
    out["scan_names_no_component"] = bytes(data)
    data = bytearray(jpeg)
    data[sos + 6] = 0x33
    out["scan_names_undefined_tables"] = bytes(data)
    out["huffman_tables_missing"] = jpeg[:dht] + jpeg[dht_end:]
    data = bytearray(jpeg)
    data[scan + 200:scan + 210] = b"\x00\x00\x00\xff\xd9\x00\x00\x00\x00\x00"
    out["eoi_inside_the_scan"] = bytes(data)
    out["oversampled"] = oversampled(jpeg)
    return out


def decode_corpus() -> dict[str, bytes]:
    """What the batched tensor path must route right, by name: web-photo JPEGs of several sizes
    (two equal, so they share a resize call), 4:4:4 chroma, grayscale, and what must go to PIL
    (progressive, CMYK, PNG, truncated, a JPEG the decoders refuse) or be refused (HTML, empty,
    too many pixels with ``max_pixels=5_000_000``, a 10000x1 resize)."""
    photo = web_photo(1)
    gray = Image.open(io.BytesIO(web_photo(2))).convert("L")
    return {
        "photo_a": photo,
        "photo_a_again": photo,  # same size as photo_a: one resize call for both
        "photo_b": web_photo(3),
        "photo_444": encode(Image.open(io.BytesIO(web_photo(4))), quality=90, subsampling=0),
        "photo_progressive": web_photo(5, progressive=True),
        "gray": encode(gray, quality=85),
        "cmyk": encode(Image.open(io.BytesIO(web_photo(6))).convert("CMYK"), quality=90),
        "png": image_bytes(7, (300, 200), fmt="PNG"),
        "tiny_1x1": encode(Image.new("RGB", (1, 1), (200, 30, 30))),
        "wide_2000x20": encode(Image.new("RGB", (2000, 20), (10, 200, 30))),
        "wide_10000x1": encode(Image.new("RGB", (10000, 1), (10, 200, 30))),
        "html": b"<!DOCTYPE html><html>404</html>",
        "empty": b"",
        "truncated": image_bytes(8, (320, 240))[:-600],
        "truncated_with_eoi": image_bytes(9, (320, 240))[:-600] + b"\xff\xd9",
        "bad_quant_table": bad_quant_table(image_bytes(10, (320, 240))),
        "too_many_pixels": encode(Image.new("RGB", (3000, 2000), (1, 2, 3))),
    }
