"""Benchmark: images/s from each source layout against the same bytes read from WebDataset tars.

    python bench/sources.py [--images 1200] [--partitions 4] [--repeat 3] [--size 256] [--smoke]

Writes the same JPEGs (``--size`` px, distinct bytes) four ways in a temporary directory: tar
shards with their Parquet (the baseline), a folder of files (one directory per partition), and
Parquet files with the bytes in img2dataset's ``jpg`` column and in a Hugging Face ``image``
struct. Then, in the same run, for each layout:

* **read**: every sample of every partition through the engine's reader
  (:func:`nemo_aesthetic.engine.sources.read_items`, tars through the same function), the work a
  source adds before decoding;
* **score**: the legacy front end to end (open the dataset, embed with a tiny CLIP-family model,
  score, compute every row) on Dask's threaded scheduler: reading, decoding and the model.

Each figure is the best of ``--repeat`` runs after one untimed warm-up run of each, the layouts
taking turns so all see the same (warm) page cache and load from other processes; images per CPU second of this process (all its
threads) are printed too, steadier than wall time on a shared machine. The goal is >= 0.9x the
tars for folders and Parquet.
"""
from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time

import dask
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from factory import TINY_KWARGS, TINY_MODEL, add_member, image_bytes  # noqa: E402

from nemo_aesthetic.datasets import ImageTextPairDataset  # noqa: E402

LAYOUTS = ("tars", "folder", "img2dataset parquet", "hugging face parquet")


def write_layouts(root: str, images: int, partitions: int, size: int) -> dict[str, str]:
    data = [image_bytes(i, (size, size), noise=60, quality=90) for i in range(images)]
    per = -(-images // partitions)
    paths = {name: os.path.join(root, name.replace(" ", "_")) for name in LAYOUTS}
    for path in paths.values():
        os.makedirs(path)
    for p in range(partitions):
        chunk = list(enumerate(data))[p * per:(p + 1) * per]
        keys = [f"{p:05d}{i:05d}" for i, _ in chunk]
        with tarfile.open(os.path.join(paths["tars"], f"{p:05d}.tar"), "w") as tar:
            for key, (_, jpg) in zip(keys, chunk):
                add_member(tar, f"{key}.jpg", jpg)
        pd.DataFrame({"key": keys}).to_parquet(os.path.join(paths["tars"], f"{p:05d}.parquet"))
        os.makedirs(os.path.join(paths["folder"], f"d{p:03d}"))
        for key, (_, jpg) in zip(keys, chunk):
            with open(os.path.join(paths["folder"], f"d{p:03d}", f"{key}.jpg"), "wb") as f:
                f.write(jpg)
        jpgs = pa.array([jpg for _, jpg in chunk], pa.binary())
        pq.write_table(pa.table({"key": keys, "status": ["success"] * len(keys), "jpg": jpgs}),
                       os.path.join(paths["img2dataset parquet"], f"{p:05d}.parquet"))
        struct = pa.StructArray.from_arrays([jpgs, pa.array([f"{k}.jpg" for k in keys])], names=["bytes", "path"])
        pq.write_table(pa.table({"image": struct, "text": keys}),
                       os.path.join(paths["hugging face parquet"], f"train-{p:05d}.parquet"))
    return paths


def open_dataset(name: str, path: str):
    if name == "tars":
        return ImageTextPairDataset.from_webdataset(path)
    if name == "folder":
        return ImageTextPairDataset.from_image_folder(path)
    return ImageTextPairDataset.from_parquet(path)


def read_all(name: str, path: str) -> int:
    from nemo_aesthetic.engine.sources import Partition, read_items

    dataset = open_dataset(name, path)
    parts = [s.source or Partition("webdataset", s.name, s.tar) for s in dataset.shards]
    return sum(1 for part in parts for item in read_items(part) if item.image is not None)


def score_all(name: str, path: str, embedder) -> int:
    df = embedder(open_dataset(name, path)).metadata.compute()
    assert df["error"].isna().all(), df["error"].dropna().head()
    return len(df)


def best_rates(paths: dict, run, repeat: int) -> dict[str, tuple[float, float]]:
    """``{layout: (best images per wall second, best images per CPU second of this process)}``."""
    best = {name: (0.0, 0.0) for name in paths}
    for name, path in paths.items():  # warm-up: imports, model load, page cache
        run(name, path)
    for _ in range(repeat):
        for name, path in paths.items():
            wall, cpu = time.perf_counter(), time.process_time()
            n = run(name, path)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (max(best[name][0], n / wall), max(best[name][1], n / max(cpu, 1e-9)))
    return best


def report(title: str, rates: dict[str, tuple[float, float]]) -> None:
    base_wall, base_cpu = rates["tars"]
    print(title)
    for name, (wall, cpu) in rates.items():
        print(f"  {name:<22} {wall:9.1f} images/s  {wall / base_wall:5.2f}x tars   "
              f"{cpu:9.1f} images/cpu-s  {cpu / base_cpu:5.2f}x tars")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="decode threads per partition")
    parser.add_argument("--smoke", action="store_true", help="a few images, once (the test's check)")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.partitions, args.repeat, args.size = 24, 2, 1, 64
    import timm
    import torch

    from nemo_aesthetic.image.embedders import TimmImageEmbedder

    with tempfile.TemporaryDirectory(prefix="bench-sources-") as root:
        paths = write_layouts(root, args.images, args.partitions, args.size)
        torch.manual_seed(0)
        checkpoint = os.path.join(root, "tiny.pth")
        torch.save(timm.create_model(TINY_MODEL, pretrained=False, **TINY_KWARGS).state_dict(), checkpoint)
        embedder = TimmImageEmbedder(TINY_MODEL, model_kwargs=TINY_KWARGS, checkpoint_path=checkpoint, batch_size=32,
                                     num_threads_per_worker=args.threads)
        print(f"{args.images} JPEGs of {args.size}x{args.size} px in {args.partitions} partitions per layout, "
              f"best of {args.repeat}")
        report("read (samples through the engine's reader):", best_rates(paths, read_all, args.repeat))
        with dask.config.set(scheduler="threads"):
            report(f"score (legacy front, tiny model, {args.threads} decode threads):",
                   best_rates(paths, lambda n, p: score_all(n, p, embedder), args.repeat))


if __name__ == "__main__":
    main()
