"""Benchmark: ``ImageTextPairDataset.to_webdataset`` against a plain ``tarfile`` copy of the same bytes.

    python bench/reshard.py [--samples 2000] [--shards 4] [--repeat 3] [--scheduler threads]

Generates an img2dataset-shaped dataset in a temporary directory (256x256 JPEGs plus ``.txt``
and ``.json`` members, ~5% failed rows with no tar member, rows and members in shuffled
"completion" order), then, in the same run and on the same files:

* ``to_webdataset`` keeping every row that has an image, and keeping about half of them;
* the baseline: a plain ``tarfile`` stream copy that reads every member of every input tar and
  writes the kept ones to new tars of the same size (no Dask, no Parquet, no atomic rename,
  no fsync) -- the least work that produces the same tar bytes.

Each figure is the best of ``--repeat`` runs, the two methods alternating so both see the same
(warm) page cache and the same load from other processes. Throughput: samples written per
second and MB of input tar read per second, by wall time; CPU time (all threads of this process)
is shown too, as it is steadier than wall time on a shared machine.
The goal is ``to_webdataset`` >= 0.5x the plain copy. The Dask scheduler is the default threaded
one (``--scheduler threads``; ``sync`` and ``processes`` are accepted for comparison).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import sys
import tarfile
import tempfile
import time

import dask
import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from factory import image_bytes  # noqa: E402  (the tests' picture generator)

from nemo_aesthetic.datasets import ImageTextPairDataset


def jpeg(seed: int, size: int = 256) -> bytes:
    return image_bytes(seed, (size, size), noise=60, quality=90)


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def generate(root: str, samples: int, shards: int, fail_rate: float = 0.05, seed: int = 0) -> int:
    """Write the dataset; returns the number of samples that have an image in a tar."""
    rnd = random.Random(seed)
    per_shard = -(-samples // shards)
    images = [jpeg(i) for i in range(64)]  # distinct bytes are not needed, sizes are
    with_image = 0
    for s in range(shards):
        order = list(range(min(per_shard, samples - s * per_shard)))
        rnd.shuffle(order)
        rows = []
        with tarfile.open(os.path.join(root, f"{s:05d}.tar"), "w") as tar:
            for i in order:
                key = f"{s:05d}{i:04d}"
                ok = rnd.random() >= fail_rate
                caption = f"a picture number {key}"
                rows.append({"url": f"http://127.0.0.1/{key}.jpg", "key": key, "caption": caption,
                             "status": "success" if ok else "failed_to_download",
                             "width": 256 if ok else None, "height": 256 if ok else None})
                if ok:
                    with_image += 1
                    add(tar, f"{key}.jpg", images[(s * per_shard + i) % len(images)])
                    add(tar, f"{key}.txt", caption.encode())
                    add(tar, f"{key}.json", json.dumps({"key": key, "caption": caption}).encode())
        pd.DataFrame(rows).to_parquet(os.path.join(root, f"{s:05d}.parquet"), index=False)
        with open(os.path.join(root, f"{s:05d}_stats.json"), "w") as f:
            json.dump({"count": len(rows), "successes": sum(r["status"] == "success" for r in rows)}, f)
    return with_image


def keep_half(key: str) -> bool:
    return int(key) % 2 == 0


def plain_copy(src: str, dst: str, samples_per_shard: int, half: bool) -> int:
    """Read every member of every input tar; write the kept samples to new tars of fixed size."""
    os.makedirs(dst, exist_ok=True)
    out, out_index, in_shard, written, last_key = None, 0, 0, 0, None
    for name in sorted(n for n in os.listdir(src) if n.endswith(".tar")):
        with tarfile.open(os.path.join(src, name), "r|") as tar:
            for info in tar:
                data = tar.extractfile(info).read()
                key, ext = info.name.split(".", 1)
                if half and not keep_half(key):
                    continue
                if key != last_key:
                    if out is None or in_shard == samples_per_shard:
                        if out is not None:
                            out.close()
                        out = tarfile.open(os.path.join(dst, f"{out_index:05d}.tar"), "w|",
                                           format=tarfile.PAX_FORMAT)
                        out_index += 1
                        in_shard = 0
                    in_shard += 1
                    written += 1
                    last_key = key
                new = tarfile.TarInfo(f"{out_index - 1:05d}{in_shard - 1:04d}.{ext}")
                new.size, new.mtime, new.mode = len(data), info.mtime, info.mode
                out.addfile(new, io.BytesIO(data))
    if out is not None:
        out.close()
    return written


def run_to_webdataset(src: str, dst: str, samples_per_shard: int, half: bool) -> int:
    ds = ImageTextPairDataset.from_webdataset(src)
    keep = ds.metadata["status"] == "success"
    if half:
        keep = keep & ds.metadata["key"].map(keep_half, meta=("key", bool))
    ds.metadata["keep"] = keep
    return ds.to_webdataset(dst, "keep", samples_per_shard=samples_per_shard)["written"]


def measure(fn, src: str, dst: str, samples_per_shard: int, half: bool) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process -- all threads --, samples written)."""
    shutil.rmtree(dst, ignore_errors=True)
    w0, c0 = time.perf_counter(), time.process_time()
    written = fn(src, dst, samples_per_shard, half)
    return time.perf_counter() - w0, time.process_time() - c0, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--samples-per-shard", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scheduler", default="threads", choices=["threads", "sync", "processes"])
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench-reshard-")
    try:
        src = os.path.join(tmp, "in")
        os.makedirs(src)
        t0 = time.perf_counter()
        with_image = generate(src, args.samples, args.shards)
        tar_bytes = sum(os.path.getsize(os.path.join(src, n)) for n in os.listdir(src) if n.endswith(".tar"))
        mb = tar_bytes / 1e6
        print(f"dataset: {args.samples} rows, {with_image} samples with an image, {args.shards} shards, "
              f"{mb:.1f} MB of tar (generated in {time.perf_counter() - t0:.1f}s); "
              f"output shards of {args.samples_per_shard}; dask scheduler: {args.scheduler}; "
              f"cpus: {os.cpu_count()}; best of {args.repeat}")
        print(f"{'case':<10} {'method':<14} {'samples':>7} {'wall s':>7} {'cpu s':>7} {'samples/s':>10} {'MB/s':>7}")
        methods = {"plain tarfile": plain_copy, "to_webdataset": run_to_webdataset}
        with dask.config.set(scheduler=args.scheduler):
            for half in (False, True):
                case = "keep half" if half else "keep all"
                wall = {m: float("inf") for m in methods}
                cpu = dict(wall)
                written = {}
                for _ in range(args.repeat):  # alternate, so both see the same load and page cache
                    for method, fn in methods.items():
                        w, c, written[method] = measure(fn, src, os.path.join(tmp, method.replace(" ", "_")),
                                                        args.samples_per_shard, half)
                        wall[method], cpu[method] = min(wall[method], w), min(cpu[method], c)
                for method in methods:
                    print(f"{case:<10} {method:<14} {written[method]:>7} {wall[method]:>7.3f} {cpu[method]:>7.3f} "
                          f"{written[method] / wall[method]:>10.0f} {mb / wall[method]:>7.1f}")
                assert written["plain tarfile"] == written["to_webdataset"]
                ratio = wall["plain tarfile"] / wall["to_webdataset"]
                print(f"{case:<10} ratio to_webdataset / plain copy = {ratio:.2f}x wall "
                      f"({'meets' if ratio >= 0.5 else 'MISSES'} the 0.5x goal), "
                      f"{cpu['plain tarfile'] / cpu['to_webdataset']:.2f}x in CPU time")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
