"""The demo dataset: a small img2dataset-shaped dataset of real photographs and poor images.

The photographs are the sample images that ship inside the scikit-image wheel
(``skimage/data/*.png|jpg``: public domain / CC0, see ``skimage.data``'s docstrings). They are
read straight from the installed package's files, so nothing is downloaded (scikit-image's
``pooch`` fetcher is never used). The poor images are made on the fly: uniform noise, a flat
colour, a heavily blurred photograph, a 16x16 thumbnail and a truncated JPEG; three rows are
failed downloads with no tar member, as img2dataset writes them.

The layout is img2dataset's: ``NNNNN.tar`` (``<key>.jpg``, ``<key>.txt``, ``<key>.json``),
``NNNNN.parquet`` (one row per URL, failed downloads included) and ``NNNNN_stats.json``, with
zero-padded string keys and rows in a shuffled "completion" order.
"""
from __future__ import annotations

import collections
import dataclasses
import importlib.util
import io
import json
import os
import random
import tarfile

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

#: The demo writes NNNNN.tar/.parquet/_stats.json for these shards plus MARKER, nothing else;
#: a folder holding anything more is not a previous demo and is not written into.
N_SHARDS = 2
MARKER = "nemo_aesthetic_demo.json"


@dataclasses.dataclass(frozen=True)
class Photo:
    filename: str  # in skimage/data
    caption: str


#: Real photographs bundled in the scikit-image wheel (no download needed).
PHOTOS = (
    Photo("astronaut.png", "astronaut Eileen Collins, NASA portrait"),
    Photo("chelsea.png", "Chelsea the tabby cat"),
    Photo("coffee.png", "a cup of coffee on a wooden table"),
    Photo("rocket.jpg", "Falcon 9 rocket launch at Cape Canaveral"),
    Photo("motorcycle_left.png", "a red motorcycle in a workshop"),
    Photo("hubble_deep_field.jpg", "Hubble eXtreme Deep Field galaxies"),
    Photo("camera.png", "cameraman with a film camera (b/w)"),
    Photo("coins.png", "Greek coins from Pompeii (b/w)"),
)

#: Rows img2dataset could not download: metadata only, no tar member.
FAILED_DOWNLOADS = (
    ("sunset over the sea at Biarritz", "HTTP Error 404: Not Found"),
    ("a bowl of ramen, top view", "<urlopen error timed out>"),
    ("mountain lake in the Alps", "HTTP Error 403: Forbidden"),
)


class DemoDataError(RuntimeError):
    """The sample photographs cannot be found (scikit-image missing or too old)."""


def skimage_data_dir() -> str:
    """The ``data`` folder of the installed scikit-image, found without importing it."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.origin:
        raise DemoDataError("the demo's photographs come from scikit-image: pip install 'scikit-image>=0.21'")
    return os.path.join(os.path.dirname(spec.origin), "data")


def _jpeg(image: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _load_photo(directory: str, filename: str) -> Image.Image:
    with Image.open(os.path.join(directory, filename)) as im:
        im.load()
        return im.convert("RGB") if im.mode not in ("RGB", "L") else im.copy()


def demo_items(seed: int = 0) -> list[dict]:
    """Every row of the demo dataset: ``{"caption", "kind", "image" (bytes|None), "error_message"}``."""
    directory = skimage_data_dir()
    rng = np.random.default_rng(seed)
    items = []
    photos = {}
    for photo in PHOTOS:
        if not os.path.exists(os.path.join(directory, photo.filename)):
            continue  # a future scikit-image may drop a file from its wheel; use the rest
        image = _load_photo(directory, photo.filename)
        photos[photo.filename] = image
        items.append({"caption": photo.caption, "kind": "photo", "image": _jpeg(image),
                      "source": f"skimage/data/{photo.filename}"})
    if len(photos) < 3:
        raise DemoDataError(f"only {len(photos)} of the sample photographs are in {directory}; "
                            "reinstall scikit-image (pip install 'scikit-image>=0.21')")
    any_photo = photos.get("astronaut.png") or next(iter(photos.values()))
    small_photo = photos.get("coffee.png") or any_photo
    noise = Image.fromarray(rng.integers(0, 256, (384, 384, 3), dtype=np.uint8), "RGB")
    items += [
        {"caption": "uniform random noise (generated)", "kind": "poor", "image": _jpeg(noise),
         "source": "generated:noise"},
        {"caption": "flat grey-blue colour (generated)", "kind": "poor",
         "image": _jpeg(Image.new("RGB", (384, 384), (112, 128, 144))), "source": "generated:flat"},
        {"caption": "astronaut portrait, heavily blurred (generated)", "kind": "poor",
         "image": _jpeg(any_photo.convert("RGB").filter(ImageFilter.GaussianBlur(24))),
         "source": "generated:blur"},
        {"caption": "coffee photo shrunk to 16x16 (generated)", "kind": "poor",
         "image": _jpeg(small_photo.convert("RGB").resize((16, 16), Image.BICUBIC)),
         "source": "generated:tiny"},
    ]
    broken = _jpeg(photos.get("coins.png") or any_photo)
    items.append({"caption": "truncated JPEG download (generated)", "kind": "broken",
                  "image": broken[: len(broken) // 3], "source": "generated:truncated"})
    for caption, message in FAILED_DOWNLOADS:
        items.append({"caption": caption, "kind": "failed", "image": None, "error_message": message,
                      "source": "failed"})
    return items


def _add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    tar.addfile(info, io.BytesIO(data))


def check_output_dir(out: str) -> None:
    """Refuse a non-empty folder that is not a previous demo (the demo overwrites its files)."""
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise NotADirectoryError(f"--out {out} exists and is not a directory")
    ours = {MARKER} | {f"{s:05d}{suffix}" for s in range(N_SHARDS)
                       for suffix in (".tar", ".parquet", "_stats.json")}
    foreign = sorted(set(os.listdir(out)) - ours)
    if foreign:
        raise FileExistsError(f"--out {out} is not empty and not a previous demo (has {', '.join(foreign[:3])}"
                              f"{' ...' if len(foreign) > 3 else ''}); choose a new or empty directory")


def build_demo_dataset(out: str, seed: int = 0) -> dict:
    """Write the demo dataset into ``out``; returns ``{key: {"caption", "kind", "source"}}``."""
    check_output_dir(out)
    os.makedirs(out, exist_ok=True)
    items = demo_items(seed)
    rnd = random.Random(seed)
    rnd.shuffle(items)
    per_shard = -(-len(items) // N_SHARDS)
    described = {}
    mtime = 1_700_000_000
    for shard in range(N_SHARDS):
        chunk = items[shard * per_shard:(shard + 1) * per_shard]
        keyed = [(f"{shard:05d}{i:04d}", item) for i, item in enumerate(chunk)]
        rnd.shuffle(keyed)  # completion order, not key order
        rows = []
        with tarfile.open(os.path.join(out, f"{shard:05d}.tar"), "w") as tar:
            for key, item in keyed:
                failed = item["image"] is None
                width = height = None
                if not failed and item["kind"] != "broken":
                    with Image.open(io.BytesIO(item["image"])) as im:
                        width, height = im.size
                url = (f"https://images.example.invalid/{key}.jpg" if item["source"] == "failed"
                       else f"https://images.example.invalid/{item['source'].replace(':', '/')}")
                rows.append({
                    "url": url, "key": key, "caption": item["caption"],
                    "status": "failed_to_download" if failed else "success",
                    "error_message": item.get("error_message"),
                    "width": width, "height": height, "original_width": width, "original_height": height,
                })
                described[key] = {"caption": item["caption"], "kind": item["kind"], "source": item["source"]}
                if failed:
                    continue
                _add_member(tar, f"{key}.jpg", item["image"], mtime)
                _add_member(tar, f"{key}.txt", item["caption"].encode(), mtime)
                _add_member(tar, f"{key}.json", json.dumps(rows[-1]).encode(), mtime)
        frame = pd.DataFrame(rows).astype({"width": "Int64", "height": "Int64", "original_width": "Int64",
                                           "original_height": "Int64"})
        frame.to_parquet(os.path.join(out, f"{shard:05d}.parquet"), index=False)
        successes = sum(r["status"] == "success" for r in rows)
        status_dict = collections.Counter(r["error_message"] or "success" for r in rows)
        with open(os.path.join(out, f"{shard:05d}_stats.json"), "w") as f:
            json.dump({"count": len(rows), "successes": successes, "failed_to_download": len(rows) - successes,
                       "failed_to_resize": 0, "status_dict": dict(status_dict)}, f, indent=1)
    with open(os.path.join(out, MARKER), "w") as f:
        json.dump({"made_by": "nemo-aesthetic demo", "seed": seed, "rows": described}, f, indent=1)
    return described
