"""Benchmark: CPU pipeline images/s vs the in-process ceiling, measured in the same run.

Data: a generated WebDataset of 256x256 JPEGs (default 4 shards x 128) with img2dataset-style
Parquet. Model: a small CLIP-family timm ViT (``vit_large_patch14_clip_quickgelu_224`` with
depth=2, embed_dim=64, num_heads=2: real 224x224 preprocessing, 256 patch tokens, 768-d output),
loaded from a checkpoint saved here.

Thread counts (the same for every measurement): torch intra-op threads = 1, decode/preprocess
threads = ``--decode-threads`` (default 1), batch size ``--batch-size`` (default 32).

* pipeline (sync): ``TimmImageEmbedder(...)(ImageTextPairDataset.from_webdataset(dir))``,
  ``.metadata.compute(scheduler="sync")``: one process; the partition's tar is streamed, decoded
  in the embedder's thread pool (decode threads) while the calling thread runs the forward.
* pipeline (LocalCluster 1 worker x 1 thread): the same on a real distributed worker (dask sets
  OMP/MKL threads to 1 in workers); timed after a first call that loaded the model. Run twice:
  with dask's default worker environment, which sets ``MALLOC_TRIM_THRESHOLD_=65536`` (glibc then
  stops adapting its mmap threshold, so every tensor over 128 KiB is a fresh mmap + page faults +
  munmap), and through ``nemo_aesthetic.get_client``, which also sets ``MALLOC_MMAP_THRESHOLD_``
  (64 MiB) before its workers start, restoring heap allocation for those tensors.
* ceiling: the same work written as a tight loop in this process, with no Dask, no DataFrame and
  no tar parsing: JPEG bytes already in memory -> PIL decode + RGB + timm transform (in a pool of
  the same decode threads, streamed into batches) -> forward -> L2-normalise.
* sequential: decode and forward one after the other in one thread (for reference only).
* stage front: the same through ``ImageReaderStage -> ImageEmbeddingStage``, each partition run in
  this process exactly as a Dask worker runs it (``run_partition``), batches streamed.

Prints images/s for each and pipeline/ceiling (goal >= 0.8x), best of ``--repeat`` interleaved
runs, plus the process CPU time per image (all threads; a load-independent measure of the work
each does, useful on a shared machine where wall-clock rates swing with other processes).
Usage: python bench/cpu_pipeline.py [--shards 4] [--per-shard 128] [--batch-size 32] [--decode-threads 1]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from factory import image_bytes  # noqa: E402  (the tests' picture generator)

MODEL = "vit_large_patch14_clip_quickgelu_224"
MODEL_KWARGS = {"depth": 2, "embed_dim": 64, "num_heads": 2}


def jpeg(seed: int, size: int = 256) -> bytes:
    return image_bytes(seed, (size, size), noise=60, quality=90)


def write_dataset(root: Path, shards: int, per_shard: int) -> list[bytes]:
    images = []
    for s in range(shards):
        rows = []
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                data = jpeg(s * 10_000 + i)
                images.append(data)
                for ext, payload in (("jpg", data), ("txt", f"caption {key}".encode()),
                                     ("json", json.dumps({"key": key}).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                rows.append({"key": key, "caption": f"caption {key}", "status": "success", "error_message": None,
                             "width": 256, "height": 256})
        pd.DataFrame(rows).to_parquet(root / f"{s:05d}.parquet", index=False)
    return images


def make_model(checkpoint: Path):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(MODEL, pretrained=False, **MODEL_KWARGS)
    torch.save(model.state_dict(), checkpoint)
    return model.eval()


def ceiling(model, images: list[bytes], batch_size: int, decode_threads: int) -> float:
    import timm.data

    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model), is_training=False)

    def preprocess(data: bytes):
        return transform(Image.open(io.BytesIO(data)).convert("RGB"))

    start = time.perf_counter()
    batch, n = [], 0
    with torch.inference_mode(), ThreadPoolExecutor(decode_threads) as pool:
        for tensor in pool.map(preprocess, images):  # streamed: decode runs ahead while we forward
            batch.append(tensor)
            if len(batch) == batch_size:
                n += len(torch.nn.functional.normalize(model(torch.stack(batch)), dim=-1))
                batch = []
        if batch:
            n += len(torch.nn.functional.normalize(model(torch.stack(batch)), dim=-1))
    assert n == len(images)
    return len(images) / (time.perf_counter() - start)


def sequential(model, images: list[bytes], batch_size: int) -> float:
    import timm.data

    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model), is_training=False)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            batch = [transform(Image.open(io.BytesIO(d)).convert("RGB")) for d in images[i:i + batch_size]]
            torch.nn.functional.normalize(model(torch.stack(batch)), dim=-1)
    return len(images) / (time.perf_counter() - start)


def pipeline(root: Path, checkpoint: Path, batch_size: int, decode_threads: int, scheduler) -> float:
    from nemo_aesthetic.datasets import ImageTextPairDataset
    from nemo_aesthetic.image.embedders import TimmImageEmbedder

    emb = TimmImageEmbedder(MODEL, model_kwargs=MODEL_KWARGS, checkpoint_path=str(checkpoint), batch_size=batch_size,
                            num_threads_per_worker=decode_threads, device="cpu")
    start = time.perf_counter()
    ds = ImageTextPairDataset.from_webdataset(str(root))
    metadata = emb(ds).metadata
    df = scheduler.compute(metadata).result() if hasattr(scheduler, "compute") else metadata.compute(scheduler=scheduler)
    elapsed = time.perf_counter() - start
    assert df["image_embedding"].notna().all(), df["error"].dropna().head()
    return len(df) / elapsed


def stage_front(root: Path, checkpoint: Path, batch_size: int, decode_threads: int) -> float:
    """The same work through NeMo Curator 1.x's stages (reader -> embedding), every partition
    streamed in this process as a Dask worker runs it (``run_partition``)."""
    from nemo_aesthetic.backends.dask import run_partition
    from nemo_aesthetic.stages.file_partitioning import FilePartitioningStage
    from nemo_aesthetic.stages.image.embedders.clip_embedder import ImageEmbeddingStage
    from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage

    stages = [ImageReaderStage(task_batch_size=batch_size, verbose=False),
              ImageEmbeddingStage(model_name=MODEL, model_kwargs=MODEL_KWARGS, checkpoint_path=str(checkpoint),
                                  model_inference_batch_size=batch_size, num_threads=decode_threads, device="cpu",
                                  remove_image_data=True)]
    start = time.perf_counter()
    out = [b for task in FilePartitioningStage(str(root), file_extensions=[".tar"]).process()
           for b in run_partition(stages, task)]
    elapsed = time.perf_counter() - start
    assert not any(b.errors for b in out)
    return sum(len(b.data) for b in out) / elapsed


def _cluster(use_library: bool):
    from distributed import Client, LocalCluster

    if use_library:
        from nemo_aesthetic import get_client

        return get_client("cpu", n_workers=1, threads_per_worker=1, dashboard_address=":0")
    return Client(LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"))


def run_cluster(work: Path, checkpoint: Path, model, images, args, use_library: bool):
    client = _cluster(use_library)
    with client.cluster, client:
        pipeline(work / "data", checkpoint, args.batch_size, args.decode_threads, client)  # loads the model
        trim = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("MALLOC_MMAP_THRESHOLD_")))
        cluster_runs, ceiling_runs, worker_cpu_ms = [], [], []
        for _ in range(args.repeat):
            ceiling_runs.append(ceiling(model, images, args.batch_size, args.decode_threads))
            cpu_before = sum(client.run(time.process_time).values())
            cluster_runs.append(pipeline(work / "data", checkpoint, args.batch_size, args.decode_threads, client))
            worker_cpu_ms.append((sum(client.run(time.process_time).values()) - cpu_before) * 1e3 / len(images))
        threads = sorted(client.run(torch.get_num_threads).values())
    return max(cluster_runs), max(ceiling_runs), f"{threads}, MALLOC_TRIM/MMAP_THRESHOLD_={list(trim.values())}", \
        min(worker_cpu_ms)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--decode-threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5, help="best of this many runs for each measurement")
    parser.add_argument("--no-cluster", action="store_true", help="skip the LocalCluster measurement")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-cpu-pipeline-"))
    try:
        (work / "data").mkdir()
        images = write_dataset(work / "data", args.shards, args.per_shard)
        checkpoint = work / "model.pth"
        model = make_model(checkpoint)
        print(f"{len(images)} JPEGs 256x256 in {args.shards} shards; model {MODEL} {MODEL_KWARGS}; "
              f"batch {args.batch_size}; torch threads {torch.get_num_threads()}; decode threads "
              f"{args.decode_threads}; cpus {os.cpu_count()}; load avg {os.getloadavg()[0]:.1f}")

        # Warm-up (page cache, allocator, timm import) before anything is timed.
        ceiling(model, images[: args.batch_size * 2], args.batch_size, args.decode_threads)
        pipeline(work / "data", checkpoint, args.batch_size, args.decode_threads, "sync")

        results = {"ceiling": [], "sync": [], "sequential": [], "stage": []}
        cpu_ms = {"ceiling": [], "sync": [], "sequential": [], "stage": []}
        runs = {"ceiling": lambda: ceiling(model, images, args.batch_size, args.decode_threads),
                "sync": lambda: pipeline(work / "data", checkpoint, args.batch_size, args.decode_threads, "sync"),
                "sequential": lambda: sequential(model, images, args.batch_size),
                "stage": lambda: stage_front(work / "data", checkpoint, args.batch_size, args.decode_threads)}
        for _ in range(args.repeat):  # interleaved, so load on the shared machine hits all alike
            for name, fn in runs.items():
                cpu_start = time.process_time()
                results[name].append(fn())
                cpu_ms[name].append((time.process_time() - cpu_start) * 1e3 / len(images))
        best = {k: max(v) for k, v in results.items()}
        cpu = {k: min(v) for k, v in cpu_ms.items()}
        print(f"ceiling (tight loop, in-process):      {best['ceiling']:8.1f} images/s   CPU {cpu['ceiling']:.2f} ms/image")
        print(f"sequential (1 thread, reference):      {best['sequential']:8.1f} images/s   "
              f"CPU {cpu['sequential']:.2f} ms/image")
        print(f"pipeline, sync scheduler:              {best['sync']:8.1f} images/s   CPU {cpu['sync']:.2f} ms/image")
        print(f"    pipeline/ceiling = {best['sync'] / best['ceiling']:.2f}x images/s  (goal >= 0.8x); "
              f"CPU work per image ceiling/pipeline = {cpu['ceiling'] / cpu['sync']:.2f}x")
        print(f"    (all runs, images/s: ceiling {[round(v) for v in results['ceiling']]}, "
              f"pipeline {[round(v) for v in results['sync']]})")
        print(f"stage front, in-process:               {best['stage']:8.1f} images/s   CPU {cpu['stage']:.2f} ms/image")
        print(f"    stage/ceiling = {best['stage'] / best['ceiling']:.2f}x, stage/pipeline = "
              f"{best['stage'] / best['sync']:.2f}x images/s; CPU work per image pipeline/stage = "
              f"{cpu['sync'] / cpu['stage']:.2f}x  (runs: {[round(v) for v in results['stage']]})")

        if not args.no_cluster:
            default_env = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
            for label, use_library in (("plain LocalCluster, dask's default worker env", False),
                                       ("nemo_aesthetic.get_client (adds MALLOC_MMAP_THRESHOLD_)", True)):
                # The nanny also writes these variables into this process's os.environ, where the
                # next cluster's workers would inherit them: start each run from the original env.
                saved = {k: os.environ.get(k) for k in (*default_env, "MALLOC_MMAP_THRESHOLD_")}
                try:
                    c, ce, threads, worker_cpu = run_cluster(work, checkpoint, model, images, args, use_library)
                finally:
                    for k, v in saved.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
                print(f"pipeline, LocalCluster 1 worker x 1 thread, {label} (worker torch threads {threads}):")
                print(f"    {c:.1f} images/s, worker CPU {worker_cpu:.2f} ms/image;  ceiling measured alongside "
                      f"{ce:.1f} images/s: {c / ce:.2f}x  (goal >= 0.8x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
