#!/usr/bin/env bash
# gpu-check.sh - nemo_aesthetic on a GPU machine (one NVIDIA GPU, no network) in ONE command.
#
#   bash bench/gpu-check.sh       # from the repository root; BENCHMARKS.md "GPU" says how to prepare .whl/
#
# The repository's copy of ../shared/device/gpu-check.sh, adapted to the batched tensor path of
# issue 14 (the photo bench's host/prep sections use the new preprocessing API; the e2e section
# feeds the project's pipeline a bf16 model as TimmImageEmbedder loads it and adds a two-shards-
# at-a-time run; the cluster runs two threads per worker; the bench step is the new
# bench/gpu_throughput.py with its fidelity line). Wheels and the aesthetic weights are taken
# from the folder of this script if it holds wheels, else from <repo>/.whl: the wheels listed in
# BENCHMARKS.md and shared/models/sac+logos+ava1-l14-linearMSE.pth (the GPU tests need it).
# Steps, each time-boxed with `timeout`, each run whatever the previous ones did, none touching the
# network:
#   install  pip install --no-index --target /tmp/site .whl/*.whl; PYTHONPATH=/tmp/site:<repo>
#   env      nvidia-smi, versions, `import nemo_aesthetic, dask.distributed, webdataset`
#   tests    python -m pytest -m gpu <the test modules that use the `gpu` mark: tests/test_gpu.py>
#   bench    python bench/gpu_throughput.py  (the project's benchmark: model-only and end-to-end
#            images/s (1 and 2 shards at a time, LocalCUDACluster) with GPU busy %, against a bf16
#            matmul bound, and the fidelity of the GPU path's scores; 8 shards x 1000 real photos)
#   photo    photo_bench.py, written out below: the pipeline piece by piece on real photos at web
#            sizes (decode variants, preprocessing, forward variants, end-to-end, a lean prototype,
#            LocalCUDACluster, torch.compile), sections skipped as the deadline nears
# nvidia-smi dmon samples power/utilisation/clocks every 2 s throughout.
# Results in $OUT (7 files): summary.txt env.log pytest.log bench.log photo.log photo.jsonl dmon.log;
# the summary is printed last.
#
# Knobs: GPU_CHECK_BUDGET   seconds for the whole script (default 450; each step gets what is left)
#        GPU_CHECK_STEPS    default "env,tests,bench,photo"
#        BENCH_ARGS         arguments for bench/gpu_throughput.py
#        PHOTO_ARGS         extra arguments for photo_bench.py (e.g. "--sections decode,prep,e2e,lean")
#        DRY_RUN=1          CPU rehearsal: tiny model, small sizes (what was checked without a GPU)
set -o pipefail
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-450}
DEADLINE=$((START + BUDGET))
STEPS=",${GPU_CHECK_STEPS:-env,tests,bench,photo},"
DRY=${DRY_RUN:-0}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$PWD
if ! ls "$HERE"/*.whl >/dev/null 2>&1 && [ -d "$REPO/.whl" ]; then HERE=$REPO/.whl; fi
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu-check-out}
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check}
SITE=${GPU_CHECK_SITE:-/tmp/site}
mkdir -p "$OUT" "$WORK"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 \
       NEMO_AESTHETIC_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
       DASK_DISTRIBUTED__DIAGNOSTICS__NVML=True

note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((DEADLINE - $(date +%s))); }

# run_step NAME MAX_SECONDS LOG CMD...: time-boxed (never past the deadline), never fatal, noted.
run_step() {
  local name=$1 max=$2 log=$3 t s rc d verdict
  shift 3
  t=$(($(left) - 10))
  ((t > max)) && t=$max
  if ((t < 15)); then note "SKIP    $name: $(left)s left"; return 0; fi
  echo "=== $name: $* (limit ${t}s, $(date -u +%T) UTC) ===" >>"$log"
  s=$(date +%s)
  timeout -k 10 "$t" "$@" >>"$log" 2>&1 </dev/null
  rc=$?
  d=$(($(date +%s) - s))
  verdict=ok
  ((rc != 0)) && verdict="FAIL($rc)"
  ((rc == 124 || rc == 137)) && verdict="TIMEOUT"
  note "$(printf '%-8s %-10s %4ss  %s' "$verdict" "$name" "$d" "$(basename "$log")")"
}

[ -d "$REPO/nemo_aesthetic" ] || note "WARNING: $REPO does not look like the repository root (no nemo_aesthetic/)"
note "gpu-check $(date -u +%FT%TZ)  budget ${BUDGET}s  steps ${STEPS//,/ }  dry_run=$DRY  repo $REPO"

# ------------------------------------------------------------------ install the carried wheels
shopt -s nullglob
wheels=("$HERE"/*.whl)
shopt -u nullglob
if ((${#wheels[@]})); then
  run_step install 120 "$OUT/env.log" "$PY" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
  export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
  note "WARNING: no wheels in $HERE: dask/distributed/webdataset must already be importable"
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi

# The GPU tests read the real LAION weights from $NEMO_AESTHETIC_SHARED/models (default ../shared).
W=models/sac+logos+ava1-l14-linearMSE.pth
if [ -f "$HERE/shared/$W" ]; then export NEMO_AESTHETIC_SHARED=$HERE/shared
elif [ -n "${NEMO_AESTHETIC_SHARED:-}" ] && [ -f "$NEMO_AESTHETIC_SHARED/$W" ]; then :
elif [ -f "$REPO/../shared/$W" ]; then export NEMO_AESTHETIC_SHARED=$REPO/../shared
else note "WARNING: aesthetic weights not found (.whl/shared/$W): tests/test_gpu.py will error"
fi

DMON=
if command -v nvidia-smi >/dev/null 2>&1; then
  timeout $((BUDGET + 30)) nvidia-smi dmon -s pucm -d 2 -o T >"$OUT/dmon.log" 2>&1 &
  DMON=$!
fi
trap '[ -n "$DMON" ] && kill "$DMON" 2>/dev/null' EXIT

# ------------------------------------------------------------------ helper programs
cat >"$WORK/env.py" <<'PYEOF'
import importlib
import os
import platform
import sys

print(sys.version.replace("\n", " "), "|", sys.executable, "|", platform.platform())
print("PYTHONPATH", os.environ.get("PYTHONPATH"))
for name in ["torch", "torchvision", "timm", "numpy", "pandas", "pyarrow", "fsspec", "PIL", "dask", "distributed",
             "dask_cuda", "webdataset", "tornado", "zict", "partd", "locket", "tblib", "braceexpand", "cloudpickle",
             "msgpack", "toolz", "cuda.core", "pynvml", "cupy", "skimage", "pytest", "pytest_timeout"]:
    try:
        mod = importlib.import_module(name)
        print(f"  {name:14s} {str(getattr(mod, '__version__', '?')):24s} {getattr(mod, '__file__', '')}")
    except Exception as exc:
        print(f"  {name:14s} MISSING  {type(exc).__name__}: {exc}")
import torch

print("torch.cuda.is_available()", torch.cuda.is_available(), "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version(), "| threads", torch.get_num_threads(), "| cpus", os.cpu_count())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))
import nemo_aesthetic, dask.distributed, webdataset  # noqa: E401,F401  (the brief's import check)

print("import nemo_aesthetic, dask.distributed, webdataset: ok")
PYEOF
cat >"$WORK/photo_bench.py" <<'PYEOF'
"""nemo_aesthetic on the GPU, piece by piece, on real photos at web sizes.

Written out and run by gpu-check.sh from the repository root; it never changes the repository.
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

REPO = os.getcwd()
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

MODEL = "vit_large_patch14_clip_quickgelu_224"
TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}
SIZES = [(500, 375), (640, 480), (800, 600), (1024, 768), (375, 500), (480, 640), (600, 400), (1024, 683),
         (768, 1024)]
SOURCES = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]

ARGS = None
JSONL = None
T0 = time.time()


def left() -> float:
    return (ARGS.deadline - time.time()) if ARGS.deadline else 1e9


def record(section: str, name: str, value, unit: str = "", **extra) -> None:
    rec = {"t": round(time.time() - T0, 1), "section": section, "name": name, "value": value, "unit": unit, **extra}
    if JSONL:
        with open(JSONL, "a") as f:
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


class GpuBusy:
    """Samples the GPU's utilisation (NVML, % of time a kernel ran) in a thread."""

    def __init__(self, dev):
        self.on = str(dev).startswith("cuda")
        self.samples: list[float] = []
        self._stop = threading.Event()

    def __enter__(self):
        if self.on:
            import torch

            def loop():
                while not self._stop.wait(0.2):
                    try:
                        self.samples.append(float(torch.cuda.utilization()))
                    except Exception:
                        return
            self._t = threading.Thread(target=loop, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        return False

    @property
    def mean(self):
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


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


# ----------------------------------------------------------------------------------------- sections
def sec_host(ctx):
    import fsspec

    from nemo_aesthetic.datasets.shards import KeyIndex, iter_samples
    from nemo_aesthetic.image.preprocess import pick_image
    from nemo_aesthetic.image.tensor_preprocess import device_decodable, jpeg_header

    fs = fsspec.filesystem("file")
    tar = ctx["tars"][0]
    ids = [f"00000{i:04d}" for i in range(ARGS.per_shard)]
    best = 1e9
    for _ in range(2):
        t = time.perf_counter()
        idx, n = KeyIndex(ids), 0
        for s in iter_samples(fs, tar):
            idx.position(s.key)
            exts = s.extensions()
            set(exts)
            pick_image(s.members)
            n += 1
        best = min(best, (time.perf_counter() - t) / max(n, 1))
    record("host", "tar read + key lookup + pick_image (main thread)", best * 1e6, "us/sample", samples=n)
    blobs = ctx["blobs"][:1024]
    t = time.perf_counter()
    for b in blobs:
        device_decodable(jpeg_header(b), b)
    record("host", "jpeg_header + device_decodable (project, per image)", (time.perf_counter() - t) / len(blobs) * 1e6,
           "us/img")
    from PIL import Image
    t = time.perf_counter()
    for b in blobs:
        with Image.open(io.BytesIO(b)) as im:
            im.size, im.mode
    record("host", "PIL Image.open header parse (the old check), per image", (time.perf_counter() - t) / len(blobs) * 1e6,
           "us/img")


def sec_decode(ctx):
    import torch
    from concurrent.futures import ThreadPoolExecutor
    from torchvision.io import ImageReadMode, decode_jpeg

    dev = ctx["dev"]
    blobs = ctx["blobs"][:1024]
    prog = ctx["prog"][:1024]
    raws = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    mp = sum(int(r.shape[0]) for r in raws)
    cpu_threads = max(1, (os.cpu_count() or 2) - 2)
    RGB = ImageReadMode.RGB
    if dev.startswith("cuda"):
        decode_jpeg(raws[:8], mode=RGB, device=dev)
        decode_jpeg(raws[0], mode=RGB, device=dev)
        sync(dev)
        n = len(raws)
        r1 = rate(lambda: [decode_jpeg(r, mode=RGB, device=dev) for r in raws], n, dev)
        record("decode", "nvJPEG per image, 1 thread (the project's call)", r1, "img/s")
        with ThreadPoolExecutor(8) as ex:
            r8 = rate(lambda: list(ex.map(lambda r: decode_jpeg(r, mode=RGB, device=dev), raws)), n, dev)
        record("decode", "nvJPEG per image, 8 threads (torchvision's decoder mutex)", r8, "img/s")
        for bs in (64, 256):
            rb = rate(lambda: [decode_jpeg(raws[i:i + bs], mode=RGB, device=dev) for i in range(0, n, bs)], n, dev, 2)
            record("decode", f"nvJPEG batched, lists of {bs}", rb, "img/s")
        base = [r for r, p in zip(raws, prog) if not p]
        pr = [r for r, p in zip(raws, prog) if p]
        if base:
            rb = rate(lambda: [decode_jpeg(base[i:i + 256], mode=RGB, device=dev) for i in range(0, len(base), 256)],
                      len(base), dev, 2)
            record("decode", "nvJPEG batched 256, baseline JPEGs only", rb, "img/s", n=len(base))
            rs = rate(lambda: [decode_jpeg(r, mode=RGB, device=dev) for r in base[:256]], min(256, len(base)), dev)
            record("decode", "nvJPEG per image, baseline JPEGs only", rs, "img/s")
        if pr:
            rp = rate(lambda: [decode_jpeg(r, mode=RGB, device=dev) for r in pr], len(pr), dev)
            record("decode", "nvJPEG per image, progressive JPEGs only (host Huffman)", rp, "img/s", n=len(pr))
    m = min(256, len(raws))
    r = rate(lambda: [decode_jpeg(x, mode=RGB) for x in raws[:m]], m, "cpu")
    record("decode", "libjpeg-turbo (torchvision, CPU), 1 thread", r, "img/s")
    with ThreadPoolExecutor(cpu_threads) as ex:
        r = rate(lambda: list(ex.map(lambda x: decode_jpeg(x, mode=RGB), raws)), len(raws), "cpu")
    record("decode", f"libjpeg-turbo (torchvision, CPU), {cpu_threads} threads", r, "img/s")
    if dev.startswith("cuda"):
        def cpu_then_h2d(x):
            return decode_jpeg(x, mode=RGB).pin_memory().to(dev, non_blocking=True)
        with ThreadPoolExecutor(cpu_threads) as ex:
            r = rate(lambda: list(ex.map(cpu_then_h2d, raws)), len(raws), dev)
        record("decode", f"libjpeg-turbo {cpu_threads} threads + pinned H2D copy", r, "img/s")
    from nemo_aesthetic.image.preprocess import decode_image
    with ThreadPoolExecutor(cpu_threads) as ex:
        r = rate(lambda: list(ex.map(decode_image, blobs)), len(blobs), "cpu")
    record("decode", f"PIL decode_image (project CPU path), {cpu_threads} threads", r, "img/s",
           mean_kib=round(mp / len(raws) / 1024, 1))


def sec_prep(ctx):
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from nemo_aesthetic.image.tensor_preprocess import TensorBatchPreprocessor

    dev, model = ctx["dev"], ctx["model"]
    batcher = TensorBatchPreprocessor(model, dev)

    def tf_batch(images):  # the project's batched resize + crop + normalise of decoded images
        return batcher._transform(dict(enumerate(images)), {}, torch.bfloat16)[0]
    raws = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in ctx["blobs"][:512]]
    imgs = []
    for i in range(0, len(raws), 128):
        imgs += decode_jpeg(raws[i:i + 128], mode=ImageReadMode.RGB, device=dev)
    sync(dev)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=dev).view(1, 3, 1, 1) * 255
    n = len(imgs)
    with torch.inference_mode():
        ref = tf_batch(imgs[:32]).float()
        lean = lean_prep(imgs[:32], mean, std)
        record("prep", "lean vs project batched transform (bf16 out): max |difference|", float((ref - lean).abs().max()), "")
        r = rate(lambda: [tf_batch(imgs[i:i + 256]) for i in range(0, n, 256)], n, dev, 2)
        record("prep", "project batched transform, batches of 256 (GPU idle otherwise)", r, "img/s")
        side = torch.cuda.Stream() if dev.startswith("cuda") else None
        scope = (lambda: torch.cuda.stream(side)) if side is not None else contextlib.nullcontext
        def lean_all():
            with scope():
                for i in range(0, n, 256):
                    lean_prep(imgs[i:i + 256], mean, std)
        r = rate(lean_all, n, dev, 2)
        record("prep", "lean per-image resize + batched normalise (side stream)", r, "img/s")
        if not dev.startswith("cuda"):
            return
        # the same while another thread keeps forward passes running on the default stream
        # (3 s each at most): the project's per-image host syncs wait for each forward to finish
        x = torch.randn(ARGS.batch, 3, 224, 224, device=dev)

        def project_chunk(i):
            with scope():
                tf_batch(imgs[i:i + 16])

        def lean_chunk(i):
            with scope():
                lean_prep(imgs[i:i + 16], mean, std)

        for label, chunk in (("project batched transform (side stream)", project_chunk),
                             ("lean (side stream)", lean_chunk)):
            stop, fwd = threading.Event(), [0]

            def busy():
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                    while not stop.is_set():
                        model(x)
                        fwd[0] += 1
                        torch.cuda.current_stream().synchronize()

            th = threading.Thread(target=busy, daemon=True)
            th.start()
            time.sleep(0.5)
            t = time.perf_counter()
            f0, done = fwd[0], 0
            while done < n and time.perf_counter() - t < 3.0:
                chunk(done)
                done += 16
            sync(dev)
            dt = time.perf_counter() - t
            f1 = fwd[0]
            stop.set()
            th.join()
            record("prep", f"{label} while forwards run", min(done, n) / dt, "img/s",
                   forward_img_s=round((f1 - f0) * ARGS.batch / dt))


def matmul_tflops(dev: str, n: int = 8192, seconds: float = 1.5) -> float:
    import torch

    dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    if not dev.startswith("cuda"):
        n = 512
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(dev)
    it, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        a @ b
        it += 1
    sync(dev)
    return 2 * n ** 3 * it / (time.perf_counter() - t) / 1e12


def forward_rate(model, dev, batch: int, seconds: float, dtype=None, autocast=None, channels_last=False) -> float:
    import torch

    x = torch.randn(batch, 3, 224, 224, device=dev, dtype=dtype or torch.float32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ac = torch.autocast("cuda", dtype=autocast) if (autocast and dev.startswith("cuda")) else contextlib.nullcontext()
    with torch.inference_mode(), ac:
        for _ in range(3):
            model(x)
        sync(dev)
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            model(x)
            n += batch
        sync(dev)
        return n / (time.perf_counter() - t)


def sec_forward(ctx):
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    dev, model = ctx["dev"], ctx["model"]
    secs = 3.0 if dev.startswith("cuda") else 0.5
    tf = matmul_tflops(dev)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(torch.randn(1, 3, 224, 224, device=dev))
    flops = float(fc.get_total_flops())
    bound = tf * 1e12 / flops
    ctx["bound"] = bound
    record("forward", "bf16 matmul 8192^3" if dev.startswith("cuda") else "fp32 matmul 512^3", tf, "TFLOP/s",
           gflop_per_img=round(flops / 1e9, 1), bound_img_s=round(bound))
    bf16, fp16 = torch.bfloat16, torch.float16
    variants = [("autocast bf16, batch %d (project)" % ARGS.batch, dict(batch=ARGS.batch, autocast=bf16)),
                ("autocast bf16, batch %d" % (2 * ARGS.batch), dict(batch=2 * ARGS.batch, autocast=bf16)),
                ("autocast bf16, batch 64", dict(batch=64, autocast=bf16)),
                ("autocast fp16, batch %d" % ARGS.batch, dict(batch=ARGS.batch, autocast=fp16))]
    for name, kw in variants:
        if left() < 15:
            record("forward", name, "skipped (deadline)")
            continue
        r = forward_rate(model, dev, seconds=secs, **kw)
        record("forward", name, r, "img/s", of_bound=round(r / bound, 3))
    if dev.startswith("cuda") and left() > 20:
        mb = copy.deepcopy(model).to(bf16)
        r = forward_rate(mb, dev, ARGS.batch, secs, dtype=bf16)
        record("forward", "bf16 weights (no autocast), batch %d" % ARGS.batch, r, "img/s", of_bound=round(r / bound, 3))
        del mb
        torch.cuda.empty_cache()
    if left() > 15:
        mc = copy.deepcopy(model).to(memory_format=torch.channels_last)
        r = forward_rate(mc, dev, ARGS.batch, secs, autocast=bf16, channels_last=True)
        record("forward", "autocast bf16 + channels_last, batch %d" % ARGS.batch, r, "img/s", of_bound=round(r / bound, 3))
        del mc


def aesthetic_weights(tmp: str) -> str:
    shared = os.environ.get("NEMO_AESTHETIC_SHARED")
    if shared:
        p = os.path.join(shared, "models", "sac+logos+ava1-l14-linearMSE.pth")
        if os.path.exists(p):
            return p
    import torch

    from nemo_aesthetic.image.classifiers.aesthetic import upstream_mlp

    p = os.path.join(tmp, "aesthetic_random.pth")
    torch.save({f"layers.{k}": v for k, v in upstream_mlp().state_dict().items()}, p)
    return p


def project_embedder(ctx, threads: int, decode: str, inject: bool = True):
    from nemo_aesthetic import distributed as nd
    from nemo_aesthetic.image.classifiers import AestheticClassifier
    from nemo_aesthetic.image.embedders import TimmImageEmbedder

    dev = ctx["dev"]
    emb = TimmImageEmbedder(MODEL, model_kwargs=TINY if ARGS.tiny else {}, batch_size=ARGS.batch,
                            num_threads_per_worker=threads, device=dev, decode=decode,
                            classifiers=[AestheticClassifier(model_path=ctx["weights"])])
    if inject:
        # Reuse the model already on the device instead of a second random init on the CPU (~10 s),
        # cast to bf16 as TimmImageEmbedder.load_embedding_model does on CUDA; everything after the
        # load is the project's own code.
        try:
            import copy

            import torch

            if "model_bf16" not in ctx:
                ctx["model_bf16"] = copy.deepcopy(ctx["model"]).to(torch.bfloat16) if dev.startswith("cuda") \
                    else ctx["model"]
            key = emb.model_cache_key(dev)
            if key not in nd._CACHE:
                nd._CACHE[key] = (ctx["model_bf16"], emb.load_preprocessor(ctx["model_bf16"], dev))
        except Exception as exc:
            print(f"(model injection failed, the embedder loads its own: {exc})")
    return emb


def sec_e2e(ctx):
    from nemo_aesthetic.datasets import ImageTextPairDataset

    dev = ctx["dev"]
    configs = ([("tensor", 8, 1), ("tensor", 8, 2), ("tensor", 16, 2), ("pil", 16, 1)] if dev.startswith("cuda")
               else [("pil", 2, 1), ("tensor", 2, 1), ("tensor", 2, 2)])
    for decode, threads, shards_at_once in configs:
        name = f'project pipeline decode="{decode}" threads={threads} batch={ARGS.batch} shards_at_once={shards_at_once}'
        compute = {"scheduler": "sync"} if shards_at_once == 1 else {"scheduler": "threads", "num_workers": shards_at_once}
        if left() < 25:
            record("e2e", name, "skipped (deadline)")
            continue
        try:
            emb = project_embedder(ctx, threads, decode)
            emb(ImageTextPairDataset.from_webdataset(ctx["warm_root"])).metadata.compute(**compute)
            with GpuBusy(dev) as busy:
                t = time.perf_counter()
                df = emb(ImageTextPairDataset.from_webdataset(ctx["root"])).metadata.compute(**compute)
                dt = time.perf_counter() - t
            errors = int(df["error"].notna().sum())
            record("e2e", name, (len(df) - errors) / dt, "img/s", rows=len(df), errors=errors,
                   gpu_busy_pct=busy.mean, of_bound=round((len(df) - errors) / dt / ctx.get("bound", 1e9), 3))
        except Exception as exc:
            record("e2e", name, f"FAILED {type(exc).__name__}: {exc}")
            traceback.print_exc()


def sec_lean(ctx):
    import fsspec
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from nemo_aesthetic.datasets.shards import iter_samples
    from nemo_aesthetic.image.preprocess import pick_image

    dev, model = ctx["dev"], ctx["model"]
    cuda = dev.startswith("cuda")
    fs = fsspec.filesystem("file")
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=dev).view(1, 3, 1, 1) * 255
    bs = ARGS.batch

    def run(tars):
        q: queue.Queue = queue.Queue(maxsize=2)
        side = torch.cuda.Stream() if cuda else None
        err = []

        def prep(blobs):
            raws = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
            imgs = decode_jpeg(raws, mode=ImageReadMode.RGB, device=dev)
            x = lean_prep(imgs, mean, std)
            ev = None
            if cuda:
                ev = torch.cuda.Event()
                ev.record(side)
            return x, ev

        def producer():
            try:
                with torch.inference_mode(), (torch.cuda.stream(side) if cuda else contextlib.nullcontext()):
                    for tar in tars:
                        buf = []
                        for s in iter_samples(fs, tar):
                            img = pick_image(s.members)
                            if img is not None:
                                buf.append(img[1])
                            if len(buf) == bs:
                                q.put(prep(buf))
                                buf = []
                        if buf:
                            q.put(prep(buf))
            except Exception as exc:
                err.append(exc)
            finally:
                q.put(None)

        th = threading.Thread(target=producer, daemon=True)
        th.start()
        n = 0
        ac = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        with torch.inference_mode(), ac:
            while True:
                item = q.get()
                if item is None:
                    break
                x, ev = item
                if cuda:
                    torch.cuda.current_stream().wait_event(ev)
                    x.record_stream(torch.cuda.current_stream())
                f = torch.nn.functional.normalize(model(x).float(), dim=-1)
                f.cpu()
                n += x.shape[0]
        th.join()
        if err:
            raise err[0]
        return n

    run(ctx["warm_tars"])
    with GpuBusy(dev) as busy:
        t = time.perf_counter()
        n = run(ctx["tars"])
        dt = time.perf_counter() - t
    record("lean", f"prototype: tar thread -> batched nvJPEG + lean prep (side stream) -> forward, batch {bs}",
           n / dt, "img/s", images=n, gpu_busy_pct=busy.mean, of_bound=round(n / dt / ctx.get("bound", 1e9), 3))


def sec_cluster(ctx):
    from nemo_aesthetic import get_client
    from nemo_aesthetic.datasets import ImageTextPairDataset

    dev = ctx["dev"]
    if not dev.startswith("cuda"):
        record("cluster", "LocalCUDACluster", "skipped (no CUDA)")
        return
    t = time.perf_counter()
    with get_client(cluster_type="gpu", threads_per_worker=2, dashboard_address=None) as client:
        record("cluster", "LocalCUDACluster start", time.perf_counter() - t, "s",
               workers=len(client.scheduler_info()["workers"]))
        emb = project_embedder(ctx, 8, "tensor", inject=False)
        emb.device = None  # the worker picks cuda itself
        t = time.perf_counter()
        emb(ImageTextPairDataset.from_webdataset(ctx["warm_root"])).metadata.compute()
        record("cluster", "warm-up incl. model load on the worker", time.perf_counter() - t, "s")
        with GpuBusy(dev) as busy:
            t = time.perf_counter()
            df = emb(ImageTextPairDataset.from_webdataset(ctx["root"])).metadata.compute()
            dt = time.perf_counter() - t
        errors = int(df["error"].notna().sum())
        record("cluster", f'project pipeline on LocalCUDACluster (2 threads/worker), decode="tensor" threads=8 batch={ARGS.batch}',
               (len(df) - errors) / dt, "img/s", rows=len(df), errors=errors, gpu_busy_pct=busy.mean)
        client.cluster.close()


def sec_compile(ctx):
    import torch

    dev, model = ctx["dev"], ctx["model"]
    if not dev.startswith("cuda"):
        record("compile", "torch.compile", "skipped (no CUDA)")
        return
    cm = torch.compile(model)
    x = torch.randn(ARGS.batch, 3, 224, 224, device=dev)
    t = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        cm(x)
        sync(dev)
    record("compile", f"torch.compile first call (batch {ARGS.batch})", time.perf_counter() - t, "s")
    r = forward_rate(cm, dev, ARGS.batch, 3.0, autocast=torch.bfloat16)
    record("compile", f"torch.compile autocast bf16, batch {ARGS.batch}", r, "img/s",
           of_bound=round(r / ctx.get("bound", 1e9), 3))


SECTIONS = [("data", None, 0), ("host", sec_host, 10), ("decode", sec_decode, 25), ("prep", sec_prep, 20),
            ("forward", sec_forward, 40), ("e2e", sec_e2e, 40), ("lean", sec_lean, 25),
            ("cluster", sec_cluster, 90), ("compile", sec_compile, 120)]


def main() -> int:
    global ARGS, JSONL
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--tiny", action="store_true", help="tiny model (dry runs), not ViT-L/14")
    p.add_argument("--photos", type=int, default=4096)
    p.add_argument("--per-shard", type=int, default=2048)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--progressive", type=float, default=0.15, help="fraction of progressive JPEGs")
    p.add_argument("--deadline", type=float, default=0, help="epoch seconds; sections that would overrun are skipped")
    p.add_argument("--jsonl", default=None)
    p.add_argument("--workdir", default="/tmp/photo_bench")
    p.add_argument("--sections", default=",".join(s for s, _, _ in SECTIONS))
    ARGS = p.parse_args()
    JSONL = ARGS.jsonl
    wanted = set(ARGS.sections.split(","))

    import shutil
    shutil.rmtree(ARGS.workdir, ignore_errors=True)
    os.makedirs(ARGS.workdir)
    t = time.perf_counter()
    photos = build_photos(ARGS.photos, ARGS.progressive)
    root, warm_root = os.path.join(ARGS.workdir, "ds"), os.path.join(ARGS.workdir, "warm")
    tars = write_shards(root, photos, ARGS.per_shard)
    warm_tars = write_shards(warm_root, photos[:min(256, len(photos))], ARGS.per_shard)
    sizes = np.array([len(b) for b, _, _, _ in photos])
    mpix = np.array([w * h for _, w, h, _ in photos]) / 1e6
    record("data", "photos built", len(photos), "JPEGs", seconds=round(time.perf_counter() - t, 1),
           shards=len(tars), mean_kib=round(sizes.mean() / 1024, 1), mean_mpix=round(float(mpix.mean()), 3),
           progressive=int(sum(p for _, _, _, p in photos)))

    import torch

    dev = ARGS.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ctx = {"dev": dev, "root": root, "warm_root": warm_root, "tars": tars, "warm_tars": warm_tars,
           "blobs": [b for b, _, _, _ in photos], "prog": [p for _, _, _, p in photos]}
    import timm

    t = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(dev):
        ctx["model"] = timm.create_model(MODEL, pretrained=False, **(TINY if ARGS.tiny else {})).eval()
    ctx["weights"] = aesthetic_weights(ARGS.workdir)
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu"
    record("data", "model created on the device", time.perf_counter() - t, "s", device=name,
           model=MODEL + (" (tiny)" if ARGS.tiny else ""), torch=torch.__version__,
           aesthetic=os.path.basename(ctx["weights"]))
    failed = 0
    for sec, fn, need in SECTIONS:
        if fn is None or sec not in wanted:
            continue
        if left() < need:
            record(sec, "section", f"skipped: {left():.0f}s left, needs ~{need}s")
            continue
        try:
            fn(ctx)
        except Exception as exc:
            failed += 1
            record(sec, "section", f"FAILED {type(exc).__name__}: {exc}")
            traceback.print_exc()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
PYEOF

# ------------------------------------------------------------------ env
if [[ $STEPS == *,env,* ]]; then
  {
    echo "=== machine ==="; uname -a; nproc; free -g; df -h /tmp | tail -1
    if command -v nvidia-smi >/dev/null 2>&1; then
      timeout 20 nvidia-smi
      timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit,temperature.gpu --format=csv
    else echo "nvidia-smi: not found"; fi
  } >>"$OUT/env.log" 2>&1
  run_step versions 90 "$OUT/env.log" "$PY" "$WORK/env.py"
  grep -E "NVIDIA H|torch.cuda.is_available|MISSING|import nemo_aesthetic" "$OUT/env.log" | head -20 | sed 's/^/    /' | tee -a "$SUMMARY"
fi

# ------------------------------------------------------------------ the project's GPU tests
if [[ $STEPS == *,tests,* ]]; then
  # the modules that use the `gpu` mark (today tests/test_gpu.py); collecting the whole folder
  # would need the CPU suite's data files, which do not travel
  gpu_tests=$(grep -l "mark\.gpu" tests/test_*.py 2>/dev/null | tr '\n' ' ')
  per_test=
  "$PY" -c "import pytest_timeout" 2>/dev/null && per_test=--timeout=120
  # shellcheck disable=SC2086
  run_step tests 150 "$OUT/pytest.log" "$PY" -m pytest -m gpu ${gpu_tests:-tests/test_gpu.py} -q -rA \
    -p no:cacheprovider $per_test
  grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|[0-9]+ (passed|failed|skipped|error)" "$OUT/pytest.log" | tail -8 | sed 's/^/    /' | tee -a "$SUMMARY"
fi

# ------------------------------------------------------------------ the project's GPU benchmark
if [[ $STEPS == *,bench,* ]]; then
  if [ "$DRY" = 1 ]; then
    BENCH_ARGS=${BENCH_ARGS:---tiny --device cpu --batch 8 --threads 1 --shards 2 --images-per-shard 16 --seconds 0.5 --matmul 256}
  else
    BENCH_ARGS=${BENCH_ARGS:---batch 256 --threads 8 --shards 8 --images-per-shard 1000 --seconds 5}
  fi
  # shellcheck disable=SC2086
  run_step bench 240 "$OUT/bench.log" "$PY" bench/gpu_throughput.py $BENCH_ARGS
  grep -E "^(device|data|matmul|model only|end to end|fidelity)" "$OUT/bench.log" | sed 's/^/    /' | tee -a "$SUMMARY"
fi

# ------------------------------------------------------------------ real photos, piece by piece
if [[ $STEPS == *,photo,* ]]; then
  if [ "$DRY" = 1 ]; then
    PHOTO_ARGS="--device cpu --tiny --photos 96 --per-shard 48 --batch 16 ${PHOTO_ARGS:-}"
  fi
  rm -f "$OUT/photo.jsonl"
  # shellcheck disable=SC2086
  run_step photo 400 "$OUT/photo.log" "$PY" "$WORK/photo_bench.py" --deadline $((DEADLINE - 12)) \
    --jsonl "$OUT/photo.jsonl" --workdir "$WORK/photo" ${PHOTO_ARGS:-}
  grep -E "^\[" "$OUT/photo.log" | cut -c1-170 | sed 's/^/    /' | tee -a "$SUMMARY"
fi

[ -n "$DMON" ] && kill "$DMON" 2>/dev/null
DMON=
if [ -s "$OUT/dmon.log" ]; then
  awk '!/^#/ && NF > 5 {n++; if ($5+0 > 0) busy++; s += $5} END {if (n) printf "    dmon: %d samples, mean SM util %.0f%%, %d samples with SM util > 0\n", n, s/n, busy}' \
    "$OUT/dmon.log" | tee -a "$SUMMARY"
fi
note "total $(($(date +%s) - START))s of ${BUDGET}s; files in $OUT: $(cd "$OUT" && printf '%s ' *)"
echo
echo "================================ SUMMARY ================================"
cat "$SUMMARY"
