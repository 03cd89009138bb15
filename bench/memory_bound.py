"""Peak memory while embedding one big shard: bounded by the batch, not the shard.

Builds one shard of N large JPEGs (default 2,000 of 3000x2000) and a one-image shard of the same
kind, then embeds each in a fresh subprocess (synchronous scheduler, so the work happens in the
measured process) with batch_size 64 and a small timm model, and prints each run's peak RSS.
The one-image run is the baseline (interpreter + torch + model); the difference is what the
shard's size costs. The shard's tar is several hundred MB, so a reader that held the shard, or
decoded all its images, would show it here.

    python bench/memory_bound.py [N_IMAGES=2000] [WIDTH=3000] [HEIGHT=2000]
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np
import pandas as pd
from PIL import Image

MODEL = "vit_large_patch14_clip_quickgelu_224"
MODEL_KWARGS = {"depth": 2, "embed_dim": 64, "num_heads": 2}
BATCH = 64


def write_shard(root: str, n: int, size: tuple[int, int]) -> int:
    os.makedirs(root, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], -1).astype(np.int16)
    rng = np.random.default_rng(0)
    keys, total = [], 0
    with tarfile.open(os.path.join(root, "00000.tar"), "w") as tar:
        for i in range(n):
            if i % 50 == 0:  # a few distinct pictures, re-encoded with different quality: distinct bytes
                pixels = np.clip(base + rng.integers(-12, 12, (h, w, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels, "RGB")
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=70 + i % 25)
            data = buf.getvalue()
            key = f"{i:09d}"
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            keys.append(key)
            total += len(data)
    pd.DataFrame({"key": keys, "caption": ["x"] * n}).to_parquet(os.path.join(root, "00000.parquet"))
    return total


CHILD = r"""
import json, resource, sys, time, dask
from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.image.embedders import TimmImageEmbedder
path, model, kwargs, batch = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
emb = TimmImageEmbedder(model, model_kwargs=kwargs, batch_size=batch, num_threads_per_worker=2)
t = time.perf_counter()
df = emb(ImageTextPairDataset.from_webdataset(path)).metadata.compute(scheduler="sync")
elapsed = time.perf_counter() - t
print(json.dumps({"rows": len(df), "scored": int(df["error"].isna().sum()), "seconds": elapsed,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, path, MODEL, json.dumps(MODEL_KWARGS), str(BATCH)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    w = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    h = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        tar_bytes = write_shard(os.path.join(tmp, "big"), n, (w, h))
        write_shard(os.path.join(tmp, "one"), 1, (w, h))
        print(f"built {n} JPEGs of {w}x{h}: tar {tar_bytes / 2**20:.0f} MiB, "
              f"decoded pixels {n * w * h * 3 / 2**30:.1f} GiB ({time.perf_counter() - t:.0f} s)")
        base = measure(os.path.join(tmp, "one"))
        big = measure(os.path.join(tmp, "big"))
    print(f"model {MODEL} {MODEL_KWARGS}, batch_size {BATCH}, 2 decode threads, synchronous scheduler")
    print(f"baseline (1 image):   peak RSS {base['peak_rss_mb']:.0f} MiB")
    print(f"shard ({n} images):  peak RSS {big['peak_rss_mb']:.0f} MiB, {big['scored']}/{big['rows']} scored, "
          f"{big['rows'] / big['seconds']:.1f} images/s")
    print(f"growth over baseline: {big['peak_rss_mb'] - base['peak_rss_mb']:.0f} MiB "
          f"for a {tar_bytes / 2**20:.0f} MiB shard "
          f"(ratio peak/baseline {big['peak_rss_mb'] / base['peak_rss_mb']:.2f}x)")


if __name__ == "__main__":
    main()
