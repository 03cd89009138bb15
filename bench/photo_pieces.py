"""Photo bench sections: host, decode, prep, forward (see photo_common.py)."""
from __future__ import annotations

import json  # noqa: F401
import os  # noqa: F401
import queue  # noqa: F401
import threading  # noqa: F401
import time  # noqa: F401

import numpy as np  # noqa: F401

from photo_common import *  # noqa: F401,F403  (moved out of gpu-check.sh as one program)
from photo_common import ARGS, MODEL, TINY, left, rate, record, sync  # noqa: F401


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
    """bf16 (fp32 on the CPU, at 512^3) matmul TFLOP/s: gpu_throughput's measurement."""
    import gpu_throughput

    return gpu_throughput.matmul_tflops(dev, n if dev.startswith("cuda") else 512, seconds)


def forward_rate(model, dev, batch: int, seconds: float, dtype=None, autocast=None, channels_last=False) -> float:
    import gpu_throughput
    import torch

    x = torch.randn(batch, 3, 224, 224, device=dev, dtype=dtype or torch.float32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ac = torch.autocast("cuda", dtype=autocast) if (autocast and dev.startswith("cuda")) else contextlib.nullcontext()
    return gpu_throughput.images_per_second(model, x, dev, seconds, ac)


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


