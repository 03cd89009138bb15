"""Peak memory while embedding one big shard: bounded by the batch, not the shard.

Builds one shard of N large JPEGs (default 2,000 of 3000x2000) and a one-image shard of the same
kind, then embeds each in a fresh subprocess with batch_size 64 and a small timm model, through
both fronts, and prints each run's peak RSS:

* legacy: ``TimmImageEmbedder`` on the synchronous scheduler (the work happens in the measured
  process);
* stage: ``ImageReaderStage(task_batch_size=64) -> ImageEmbeddingStage(remove_image_data=True)``
  run in the measured process exactly as a Dask worker runs a partition
  (``nemo_aesthetic.backends.dask.run_partition``), batches streamed between the stages.

The one-image run is each front's baseline (interpreter + torch + model); the difference is what
the shard's size costs. The shard's tar is several hundred MB, so a reader that held the shard,
or decoded all its images, would show it here.

    python bench/memory_bound.py [N_IMAGES=2000] [WIDTH=3000] [HEIGHT=2000] [FRONTS=legacy,stage]
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


STAGE_CHILD = r"""
import json, os, resource, sys, time
from nemo_aesthetic.backends.dask import run_partition
from nemo_aesthetic.stages.image.embedders.clip_embedder import ImageEmbeddingStage
from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage
from nemo_aesthetic.tasks import FileGroupTask
path, model, kwargs, batch = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
stages = [ImageReaderStage(task_batch_size=batch, num_threads=2),
          ImageEmbeddingStage(model_name=model, model_kwargs=kwargs, checkpoint_path=os.path.join(path, "model.pth"),
                              model_inference_batch_size=batch, num_threads=2, remove_image_data=True)]
t = time.perf_counter()
out = run_partition(stages, FileGroupTask(dataset_name="bench", data=[os.path.join(path, "00000.tar")]))
elapsed = time.perf_counter() - t
rows = sum(len(b.data) + len(b.errors) for b in out)
print(json.dumps({"rows": rows, "scored": sum(len(b.data) for b in out), "seconds": elapsed,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(path: str, child: str = CHILD) -> dict:
    out = subprocess.run([sys.executable, "-c", child, path, MODEL, json.dumps(MODEL_KWARGS), str(BATCH)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def save_model(path: str) -> None:
    """The stage front's embedding stage loads weights from a checkpoint (no hub access)."""
    import timm
    import torch

    torch.save(timm.create_model(MODEL, pretrained=False, **MODEL_KWARGS).state_dict(), path)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    w = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    h = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    fronts = sys.argv[4].split(",") if len(sys.argv) > 4 else ["legacy", "stage"]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        tar_bytes = write_shard(os.path.join(tmp, "big"), n, (w, h))
        write_shard(os.path.join(tmp, "one"), 1, (w, h))
        print(f"built {n} JPEGs of {w}x{h}: tar {tar_bytes / 2**20:.0f} MiB, "
              f"decoded pixels {n * w * h * 3 / 2**30:.1f} GiB ({time.perf_counter() - t:.0f} s)")
        for name in ("one", "big"):
            save_model(os.path.join(tmp, name, "model.pth"))
        runs = {front: (measure(os.path.join(tmp, "one"), child), measure(os.path.join(tmp, "big"), child))
                for front, child in (("legacy", CHILD), ("stage", STAGE_CHILD)) if front in fronts}
    print(f"model {MODEL} {MODEL_KWARGS}, batch_size {BATCH}, 2 decode threads, in the measured process")
    for front, (base, big) in runs.items():
        print(f"{front:6s} baseline (1 image):  peak RSS {base['peak_rss_mb']:.0f} MiB")
        print(f"{front:6s} shard ({n} images): peak RSS {big['peak_rss_mb']:.0f} MiB, "
              f"{big['scored']}/{big['rows']} scored, {big['rows'] / big['seconds']:.1f} images/s")
        print(f"{front:6s} growth over baseline: {big['peak_rss_mb'] - base['peak_rss_mb']:.0f} MiB "
              f"for a {tar_bytes / 2**20:.0f} MiB shard "
              f"(ratio peak/baseline {big['peak_rss_mb'] / base['peak_rss_mb']:.2f}x)")
    if len(runs) == 2:
        legacy, stage = runs["legacy"][1], runs["stage"][1]
        print(f"stage/legacy peak RSS on the shard: {stage['peak_rss_mb'] / legacy['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
