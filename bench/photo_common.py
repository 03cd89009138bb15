"""nemo_aesthetic on the GPU, piece by piece, on real photos at web sizes.

Run by bench/gpu_check.py (bash bench/gpu-check.sh) from the repository root; it never changes the
repository. Sections live in photo_pieces.py and photo_pipeline.py, shared helpers here,
``main`` in photo_bench.py.
The model is a randomly initialised vit_large_patch14_clip_quickgelu_224 (same FLOPs as the
OpenAI weights; nothing is downloaded). The photos are scikit-image's bundled colour photos,
cropped and resized to web sizes (500x375 .. 1024x768, both orientations), light sensor-like noise
added, JPEG quality 75-95, a fraction saved progressive, written as img2dataset shards.

Sections, in order, each skipped when the deadline is near (--deadline, epoch seconds):
  data     build the photos and the shards
  host     CPU cost per sample of the tar loop and of the JPEG header check (main thread, GIL held)
  decode   bytes -> uint8 CHW: nvJPEG per image (1 and 8 threads), nvJPEG batched (list),
           libjpeg-turbo on the CPU (1 and N threads), PIL (N threads)
  prep     decoded uint8 -> normalised 224x224: the project's per-image transform vs a lean one
           (float resize on a side stream, one batched normalise), alone and beside a running forward
  forward  ViT-L/14 forward: bf16 autocast b256/b512, fp16 autocast, bf16 weights, channels_last,
           against a bf16 matmul bound measured here
  e2e      the project's pipeline (TimmImageEmbedder + AestheticClassifier, sync scheduler):
           decode="tensor" with 8 and 16 threads, decode="pil" with 16 threads; GPU busy %
  lean     a prototype pipeline: tar thread -> batched nvJPEG + lean resize on a side stream ->
           forward on the default stream, two batches in flight (what the hardware allows)
  cluster  the project's pipeline through get_client("gpu") (dask-cuda LocalCUDACluster)
  compile  torch.compile(model) model-only throughput and compile time

Every result is one JSON line in --jsonl and one readable line on stdout.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import queue
import random
import sys
import tarfile
import threading
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_throughput import GpuBusy  # noqa: E402,F401  (one GPU-busy sampler for both benches)

REPO = os.getcwd()
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

MODEL = "vit_large_patch14_clip_quickgelu_224"
TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}
SIZES = [(500, 375), (640, 480), (800, 600), (1024, 768), (375, 500), (480, 640), (600, 400), (1024, 683),
         (768, 1024)]
SOURCES = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]

ARGS = argparse.Namespace(deadline=0, jsonl=None)  # filled in by photo_bench.main
T0 = time.time()


def left() -> float:
    return (ARGS.deadline - time.time()) if ARGS.deadline else 1e9


def record(section: str, name: str, value, unit: str = "", **extra) -> None:
    rec = {"t": round(time.time() - T0, 1), "section": section, "name": name, "value": value, "unit": unit, **extra}
    if ARGS.jsonl:
        with open(ARGS.jsonl, "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
    shown = (f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}") if isinstance(value, float) else str(value)
    more = " ".join(f"{k}={v}" for k, v in extra.items())
    print(f"[{rec['t']:6.1f}s] {section:8s} {name:55s} {shown} {unit} {more}".rstrip(), flush=True)


# ----------------------------------------------------------------------------------------- data
_SRC = None
_NOISE = None


def _sources():
    import skimage.data as d

    out = []
    for n in SOURCES:
        try:
            a = getattr(d, n)()
            if a.ndim == 3 and a.shape[2] == 3:
                out.append(a)
        except Exception:
            pass
    return out


def make_photo(seed: int, progressive_frac: float):
    """One real photo crop at a web size, as JPEG bytes: (bytes, w, h, progressive)."""
    from PIL import Image

    global _SRC, _NOISE
    if _SRC is None:
        _SRC = _sources()
        if not _SRC:
            raise RuntimeError("no scikit-image colour photos available")
        _NOISE = np.random.default_rng(12345).normal(0, 2.0, (1100, 1100, 3)).astype(np.int16)
    rnd = random.Random(seed)
    a = _SRC[seed % len(_SRC)]
    h, w = a.shape[:2]
    tw, th = SIZES[rnd.randrange(len(SIZES))]
    ar = tw / th
    cw, ch = (w, int(w / ar)) if w / h < ar else (int(h * ar), h)
    s = rnd.uniform(0.5, 1.0)
    cw, ch = max(16, int(cw * s)), max(16, int(ch * s))
    x0, y0 = rnd.randint(0, w - cw), rnd.randint(0, h - ch)
    img = Image.fromarray(a[y0:y0 + ch, x0:x0 + cw]).resize((tw, th), Image.LANCZOS)
    if rnd.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    ny, nx = rnd.randint(0, 1100 - th), rnd.randint(0, 1100 - tw)
    arr = np.asarray(img, dtype=np.int16) + _NOISE[ny:ny + th, nx:nx + tw]
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    prog = rnd.random() < progressive_frac
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=rnd.randint(75, 95), progressive=prog)
    return buf.getvalue(), tw, th, prog


def _photo_job(args):
    return make_photo(*args)


def build_photos(n: int, progressive_frac: float):
    import multiprocessing as mp

    procs = max(1, min(16, os.cpu_count() or 1))
    jobs = [(i, progressive_frac) for i in range(n)]
    if procs == 1 or n < 64:
        return [make_photo(*j) for j in jobs]
    with mp.get_context("fork").Pool(procs) as pool:
        return pool.map(_photo_job, jobs, chunksize=16)


def write_shards(root: str, photos, per_shard: int) -> list[str]:
    import pandas as pd
    from factory import add_member

    os.makedirs(root, exist_ok=True)
    tars = []
    for shard, start in enumerate(range(0, len(photos), per_shard)):
        rows = []
        tar_path = os.path.join(root, f"{shard:05d}.tar")
        with tarfile.open(tar_path, "w") as tar:
            for i, (data, w, h, _) in enumerate(photos[start:start + per_shard]):
                key = f"{shard:05d}{i:04d}"
                add_member(tar, f"{key}.jpg", data)
                add_member(tar, f"{key}.txt", f"caption {key}".encode())
                add_member(tar, f"{key}.json", json.dumps({"key": key, "width": w, "height": h}).encode())
                rows.append({"url": f"http://127.0.0.1/{key}.jpg", "key": key, "caption": f"caption {key}",
                             "status": "success", "error_message": None, "width": w, "height": h})
        pd.DataFrame(rows).to_parquet(os.path.join(root, f"{shard:05d}.parquet"), index=False)
        tars.append(tar_path)
    return tars


# ----------------------------------------------------------------------------------------- helpers
def sync(dev):
    import torch

    if str(dev).startswith("cuda"):
        torch.cuda.synchronize()


def rate(fn, n_items: int, dev, reps: int = 1) -> float:
    """items/s of fn() (best of reps), synchronising the device around it."""
    best = 0.0
    for _ in range(reps):
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        best = max(best, n_items / (time.perf_counter() - t))
    return best


def resize_geometry(h: int, w: int, size: int = 224):
    """torchvision's Resize(size) output size and CenterCrop(size) offsets, as the project applies them."""
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nh, nw = size, int(size * w / h)
    top, left_ = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return nh, nw, top, left_


def lean_prep(images, mean255, std255, size: int = 224):
    """uint8 CHW images (any sizes, on one device) -> normalised (n,3,size,size) float, no host syncs.

    Same arithmetic as the project's tensor transform (float32 antialiased bicubic, clamp and round
    to uint8 values, centre crop, /255, normalise) but normalised once per batch with device-resident
    statistics, so nothing waits for the device.
    """
    import torch
    import torch.nn.functional as F

    out = []
    for img in images:
        h, w = img.shape[-2:]
        nh, nw, top, lft = resize_geometry(h, w, size)
        x = img.unsqueeze(0).float()
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp_(0, 255).round_()
        out.append(x[0, :, top:top + size, lft:lft + size])
    batch = torch.stack(out)
    return batch.sub_(mean255).div_(std255)


