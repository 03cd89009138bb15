"""GPU throughput of the embedding pipeline on real photos at web sizes, against the chip's own bound.

Measures, on one device, in one run:
  bound     a large bf16 matmul's TFLOP/s (fp32 on CPU) / the model's FLOPs per image
            (torch.utils.flop_counter) = the images/s the chip could at best do;
  forward   model-only images/s on a resident batch, as the pipeline runs it (bf16 weights under
            autocast on CUDA);
  e2e       TimmImageEmbedder + fused AestheticClassifier, tar bytes in, scores out, model loaded:
            in this process one shard at a time (dask's sync scheduler), two shards at a time (a
            worker with two threads: dask's threaded scheduler), and on CUDA through
            get_client("gpu", threads_per_worker=2) (a LocalCUDACluster worker process);
            and the 1.x stage front (ImageReaderStage -> ImageEmbeddingStage ->
            ImageAestheticFilterStage), one partition at a time in this process;
            each with the GPU's busy % (NVML, sampled every 0.2 s);
  fidelity  aesthetic scores of the path measured (nvJPEG + bf16 on CUDA) against the reference
            path (PIL decode + timm's PIL transform, fp32) on shard 0, by key: mean and max |diff|.
The data are real photographs: scikit-image's bundled photos, cropped and resized to a long side of
640-1600 px, JPEG quality 75-95 with 4:2:0/4:2:2/4:4:4 chroma, ``--progressive`` of them progressive
(which go to the PIL fallback), ``--unique`` distinct pictures repeated under new keys to fill
``--shards`` x ``--images-per-shard`` img2dataset-style shards.
The CLIP weights are random (speed does not depend on them; the fidelity line says so) unless
``--pretrained`` finds vit_large_patch14_clip_quickgelu_224.openai in the Hugging Face cache.

    python bench/gpu_throughput.py                      # on a GPU machine (~2 min)
    python bench/gpu_throughput.py --tiny --device cpu  # smoke run anywhere (what CI's test does)
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tarfile
import tempfile
import threading
import time
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from factory import TINY_KWARGS as TINY  # noqa: E402  (the tests' tiny model, photo generator, tar writer)
from factory import add_member, web_photo  # noqa: E402

MODEL = "vit_large_patch14_clip_quickgelu_224"
WEIGHTS = os.path.join(os.environ.get("NEMO_AESTHETIC_SHARED", os.path.join(os.path.dirname(__file__), "..", "..",
                                                                               "shared")),
                       "models", "sac+logos+ava1-l14-linearMSE.pth")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------ data
def _photo(job):
    seed, progressive = job
    return web_photo(seed, progressive=progressive)


def write_shards(root: str, shards: int, per_shard: int, unique: int, progressive: float) -> dict:
    """img2dataset-style shards of ``unique`` real photos repeated under new keys."""
    import pandas as pd

    jobs = [(seed, int((seed + 1) * progressive) > int(seed * progressive)) for seed in range(unique)]
    procs = min(16, os.cpu_count() or 1)
    if procs > 1 and unique >= 64:
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            photos = pool.map(_photo, jobs, chunksize=8)
    else:
        photos = [_photo(job) for job in jobs]
    os.makedirs(root, exist_ok=True)
    for shard in range(shards):
        rows = []
        with tarfile.open(os.path.join(root, f"{shard:05d}.tar"), "w") as tar:
            for i in range(per_shard):
                key = f"{shard:05d}{i:04d}"
                add_member(tar, f"{key}.jpg", photos[(shard * per_shard + i) % unique])
                add_member(tar, f"{key}.txt", f"photo {key}".encode())
                add_member(tar, f"{key}.json", json.dumps({"key": key}).encode())
                rows.append({"url": f"http://127.0.0.1/{key}.jpg", "key": key, "caption": f"photo {key}",
                             "status": "success", "error_message": None})
        pd.DataFrame(rows).to_parquet(os.path.join(root, f"{shard:05d}.parquet"), index=False)
    sizes = [len(p) for p in photos]
    return {"unique": unique, "mean_kib": sum(sizes) / len(sizes) / 1024,
            "progressive": sum(p for _, p in jobs)}


# ------------------------------------------------------------------ measurements
def matmul_tflops(device: str, n: int, seconds: float = 2.0) -> float:
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    iters, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        iters += 1
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - start) / 1e12


def flops_per_image(model, device: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, 224, 224, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x.to(next(model.parameters()).dtype))
    return float(counter.get_total_flops())


def forward_only(model, device: str, batch: int, seconds: float) -> float:
    """img/s of the model alone, fed as the pipeline feeds it (bf16 weights + autocast on CUDA)."""
    cuda = device.startswith("cuda")
    x = torch.randn(batch, 3, 224, 224, device=device, dtype=torch.bfloat16 if cuda else torch.float32)
    return images_per_second(model, x, device, seconds, torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda))


def images_per_second(model, x, device: str, seconds: float, autocast=None) -> float:
    """img/s of ``model(x)`` called for ``seconds`` after 3 warm-up calls, the device synchronised
    before the clock starts and before it stops (the one timing loop of both GPU benches)."""
    import contextlib

    with torch.inference_mode(), (autocast or contextlib.nullcontext()):
        for _ in range(3):
            model(x)
        sync(device)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            n += len(x)
        sync(device)
        return n / (time.perf_counter() - start)


class GpuBusy:
    """The GPU's utilisation (NVML: % of time a kernel ran), sampled every 0.2 s in a thread."""

    def __init__(self, device: str):
        self.on = device.startswith("cuda")
        self.samples: list[float] = []
        self._stop = threading.Event()

    def __enter__(self):
        if self.on:
            def loop():
                while not self._stop.wait(0.2):
                    try:
                        self.samples.append(float(torch.cuda.utilization()))
                    except Exception:
                        return
            threading.Thread(target=loop, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def __str__(self):
        return f"{sum(self.samples) / len(self.samples):.0f}%" if self.samples else "n/a"

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def make_embedder(args, ckpt: str, weights: str, **overrides):
    from nemo_aesthetic.image.classifiers import AestheticClassifier
    from nemo_aesthetic.image.embedders import TimmImageEmbedder

    kwargs = dict(model_kwargs=TINY if args.tiny else {}, checkpoint_path=ckpt, batch_size=args.batch,
                  num_threads_per_worker=args.threads, device=args.device, compile=args.compile,
                  decode=args.decode, classifiers=[AestheticClassifier(model_path=weights)])
    kwargs.update(overrides)
    return TimmImageEmbedder(MODEL, **kwargs)


def dataset(root: str, first: int | None = None):
    from nemo_aesthetic.datasets import ImageTextPairDataset

    ds = ImageTextPairDataset.from_webdataset(root)
    if first is not None:
        ds.metadata = ds.metadata.partitions[:first]
        ds.shards, ds.tar_files = ds.shards[:first], ds.tar_files[:first]
    return ds


def end_to_end(args, embedder, root: str, **compute) -> tuple[float, GpuBusy, object]:
    """images/s from tar bytes to scores, the model already loaded (one shard run first)."""
    embedder(dataset(root, 1)).metadata.compute(**compute)
    with GpuBusy(args.device) as busy:
        start = time.perf_counter()
        df = embedder(dataset(root)).metadata.compute(**compute)
        elapsed = time.perf_counter() - start
    errors = df["error"].dropna()
    if len(errors):
        raise RuntimeError(f"{len(errors)} rows failed, e.g. {errors.iloc[0]}")
    return len(df) / elapsed, busy, df


def on_cluster(args, ckpt: str, weights: str, root: str):
    from nemo_aesthetic import get_client

    with get_client(cluster_type="gpu", threads_per_worker=2, dashboard_address=None) as client:
        embedder = make_embedder(args, ckpt, weights, device=None)  # the worker picks its GPU
        rate, busy, _ = end_to_end(args, embedder, root)
        workers = len(client.scheduler_info()["workers"])
        client.cluster.close()
    return rate, busy, workers


def stage_front(args, ckpt: str, weights: str, root: str) -> tuple[float, GpuBusy, int]:
    """images/s through NeMo Curator 1.x's stages (reader -> embedding -> aesthetic filter), each
    partition streamed in this process exactly as a Dask worker runs it, the models loaded first."""
    import shutil

    from nemo_aesthetic.backends.dask import run_partition
    from nemo_aesthetic.stages.file_partitioning import FilePartitioningStage
    from nemo_aesthetic.stages.image.embedders.clip_embedder import ImageEmbeddingStage
    from nemo_aesthetic.stages.image.filters.aesthetic_filter import ImageAestheticFilterStage
    from nemo_aesthetic.stages.image.io.image_reader import ImageReaderStage
    from nemo_aesthetic.weights import AESTHETIC_WEIGHTS

    model_dir = os.path.join(root, "..", "stage_models")  # the head under the name model_dir is searched for
    os.makedirs(model_dir, exist_ok=True)
    shutil.copy(weights, os.path.join(model_dir, AESTHETIC_WEIGHTS.filename))
    stages = [ImageReaderStage(task_batch_size=args.batch, verbose=False),
              ImageEmbeddingStage(model_name=MODEL, model_kwargs=TINY if args.tiny else None, checkpoint_path=ckpt,
                                  model_inference_batch_size=args.batch, num_threads=args.threads,
                                  device=args.device, decode=args.decode, remove_image_data=True),
              ImageAestheticFilterStage(model_dir=model_dir, score_threshold=float("-inf"))]
    partitions = FilePartitioningStage(root, file_extensions=[".tar"]).process()
    run_partition(stages, partitions[0])
    with GpuBusy(args.device) as busy:
        start = time.perf_counter()
        out = [batch for task in partitions for batch in run_partition(stages, task)]
        elapsed = time.perf_counter() - start
    errors = [reason for batch in out for _, reason in batch.errors]
    if errors:
        raise RuntimeError(f"{len(errors)} images dropped, e.g. {errors[0]}")
    images = sum(len(batch.data) for batch in out)
    return images / elapsed, busy, images


def fidelity(args, ckpt: str, weights: str, root: str, measured) -> tuple[float, float, int, float]:
    """(mean |diff|, max |diff|, rows, min cosine): the measured path's scores of shard 0 against
    the reference path (PIL decode, fp32, no autocast) on the same device."""
    import numpy as np

    from nemo_aesthetic.frames import embeddings_to_matrix

    reference = make_embedder(args, ckpt, weights, decode="pil", autocast=False, compile=False)
    ref = reference(dataset(root, 1)).metadata.compute(scheduler="sync").set_index("key")
    got = measured.set_index("key").loc[ref.index]
    diff = np.abs(got["aesthetic_score"].to_numpy(float) - ref["aesthetic_score"].to_numpy(float))
    (a, _), (b, _) = embeddings_to_matrix(got["image_embedding"]), embeddings_to_matrix(ref["image_embedding"])
    return float(diff.mean()), float(diff.max()), len(diff), float((a * b).sum(axis=1).min())


def build_model(args):
    """The model on the device (random unless --pretrained finds the weights offline) and its origin."""
    import timm

    torch.manual_seed(0)
    if args.pretrained and not args.tiny:
        try:
            return timm.create_model(MODEL + ".openai", pretrained=True).eval().to(args.device), "OpenAI (HF cache)"
        except Exception as exc:
            print(f"(--pretrained: no weights offline, random instead: {type(exc).__name__}: {exc})")
    with torch.device(args.device):
        model = timm.create_model(MODEL, pretrained=False, **(TINY if args.tiny else {})).eval()
    return model, "random"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny model (smoke test), not ViT-L/14")
    p.add_argument("--pretrained", action="store_true", help="OpenAI weights from the HF cache (offline) if there")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=8, help="decode threads per shard (PIL fallback)")
    p.add_argument("--decode", default="tensor", choices=["tensor", "pil", "auto"])
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--images-per-shard", type=int, default=1000)
    p.add_argument("--unique", type=int, default=1024, help="distinct photos (repeated to fill the shards)")
    p.add_argument("--progressive", type=float, default=0.1, help="fraction of progressive JPEGs")
    p.add_argument("--seconds", type=float, default=10.0, help="forward-only measuring time")
    p.add_argument("--matmul", type=int, default=8192)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (forward and end to end)")
    p.add_argument("--skip", default="", help="comma list of sections to skip: e2e2,stage,cluster,fidelity")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    cuda = args.device.startswith("cuda")
    failed = 0

    model, origin = build_model(args)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "clip.pth")
        torch.save(model.state_dict(), ckpt)
        weights = WEIGHTS
        if not os.path.exists(weights):
            from nemo_aesthetic.image.classifiers.aesthetic import upstream_mlp

            weights = os.path.join(tmp, "aesthetic_random.pth")
            torch.save({f"layers.{k}": v for k, v in upstream_mlp().state_dict().items()}, weights)
        root = os.path.join(tmp, "photos")
        t = time.perf_counter()
        data = write_shards(root, args.shards, args.images_per_shard, min(args.unique, args.shards *
                                                                              args.images_per_shard), args.progressive)
        name = torch.cuda.get_device_name() if cuda else "cpu"
        print(f"device: {name}; model: {MODEL}{' (tiny)' if args.tiny else ''}, {origin} weights; batch {args.batch}; "
              f"{args.threads} decode threads; decode={args.decode}; compile={args.compile}; torch {torch.__version__}")
        print(f"data: {args.shards} shards x {args.images_per_shard} real photos ({data['unique']} distinct, "
              f"long side 640-1600 px, mean {data['mean_kib']:.0f} KiB, {data['progressive']} progressive), "
              f"built in {time.perf_counter() - t:.0f}s")

        tflops = matmul_tflops(args.device, args.matmul)
        flops = flops_per_image(model, args.device)
        bound = tflops * 1e12 / flops
        print(f"matmul ({'bf16' if cuda else 'fp32'} {args.matmul}^3): {tflops:.1f} TFLOP/s; "
              f"model: {flops / 1e9:.1f} GFLOP/image -> bound {bound:,.0f} images/s")
        runner = model.to(torch.bfloat16) if cuda else model
        if args.compile:
            runner = torch.compile(runner)
        fo = forward_only(runner, args.device, args.batch, args.seconds)
        print(f"model only:  {fo:,.0f} images/s = {fo / bound:.2f}x of the bound")
        del model, runner
        if cuda:
            torch.cuda.empty_cache()

        def measure(label: str, run, note=lambda extra: ""):
            """One end-to-end line from ``run() -> (images/s, GPU busy, extra)``; returns extra
            (None, with the traceback printed, if it failed)."""
            nonlocal failed
            try:
                rate, busy, extra = run()
            except Exception:
                failed += 1
                print(f"{label:44s} FAILED")
                traceback.print_exc()
                return None
            print(f"{label:44s} {rate:,.0f} images/s = {rate / bound:.2f}x of the bound, GPU busy {busy}{note(extra)}")
            return extra

        results = {}
        for label, compute, key in (("end to end, 1 shard at a time (sync):", {"scheduler": "sync"}, "e2e1"),
                                    ("end to end, 2 shards at a time (threads):",
                                     {"scheduler": "threads", "num_workers": 2}, "e2e2")):
            if key not in skip:
                df = measure(label, lambda: end_to_end(args, make_embedder(args, ckpt, weights), root, **compute))
                if df is not None:
                    results[key] = df
        if "stage" not in skip:
            measure("end to end, stage front (1 partition at a time):",
                    lambda: stage_front(args, ckpt, weights, root), lambda images: f" ({images} images)")
        if cuda and "cluster" not in skip:
            measure("end to end, LocalCUDACluster (2 threads):",
                    lambda: on_cluster(args, ckpt, weights, root), lambda workers: f" ({workers} worker(s))")
        elif "cluster" not in skip:
            print("end to end, LocalCUDACluster: skipped (no CUDA)")
        if "fidelity" not in skip and results:
            try:
                mean, worst, n, cosine = fidelity(args, ckpt, weights, root, next(iter(results.values())))
                verdict = "PASS" if mean < 0.05 and worst < 0.2 else "FAIL"
                print(f"fidelity vs PIL fp32 ({origin} CLIP weights, {os.path.basename(weights)}): aesthetic score "
                      f"mean |diff| {mean:.4f}, max {worst:.4f} over {n} photos, min embedding cosine {cosine:.5f} "
                      f"-> {verdict} (goal: mean < 0.05, max < 0.2)")
            except Exception:
                failed += 1
                print("fidelity: FAILED")
                traceback.print_exc()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
