"""GPU throughput of the embedding pipeline against the hardware's own FLOP bound, in one run.

Measures, on one device:
  1. the bound: a large bf16 matmul's TFLOP/s (fp32 on CPU), divided by the model's FLOPs per
     image (counted with torch.utils.flop_counter) = the images/s the chip could at best do;
  2. model-only images/s: forward passes on a resident random batch (bf16 autocast on CUDA);
  3. end-to-end images/s: TimmImageEmbedder + fused AestheticClassifier over synthetic
     img2dataset-style shards of 256x256 JPEGs (tar bytes in, scores out), in this process.
The weights are random (speed does not depend on them): vit_large_patch14_clip_quickgelu_224.

    python bench/gpu_throughput.py                      # on a GPU machine
    python bench/gpu_throughput.py --tiny --device cpu  # smoke run anywhere (what CI's test does)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from factory import write_img2dataset  # noqa: E402  (the tests' dataset builder: real JPEGs, real tars)

MODEL = "vit_large_patch14_clip_quickgelu_224"
TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


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
        model(x)
    return float(counter.get_total_flops())


def model_only(model, device: str, batch: int, seconds: float) -> float:
    x = torch.randn(batch, 3, 224, 224, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast(
        "cpu", enabled=False)
    with torch.inference_mode(), autocast:
        for _ in range(3):
            model(x)
        sync(device)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            n += batch
        sync(device)
    return n / (time.perf_counter() - start)


def end_to_end(args, weights: str, ckpt: str) -> float:
    from nemo_aesthetic.datasets import ImageTextPairDataset
    from nemo_aesthetic.image.classifiers import AestheticClassifier
    from nemo_aesthetic.image.embedders import TimmImageEmbedder

    with tempfile.TemporaryDirectory() as root:
        write_img2dataset(root, n_shards=args.shards, rows_per_shard=args.images_per_shard, fail_every=0,
                          image_size=(256, 256))
        kwargs = TINY if args.tiny else {}
        embedder = TimmImageEmbedder(MODEL, model_kwargs=kwargs, checkpoint_path=ckpt, batch_size=args.batch,
                                     num_threads_per_worker=args.threads, device=args.device,
                                     compile=args.compile, classifiers=[AestheticClassifier(model_path=weights)])
        warm = ImageTextPairDataset.from_webdataset(root)
        warm.metadata = warm.metadata.partitions[:1]
        warm.shards, warm.tar_files = warm.shards[:1], warm.tar_files[:1]
        embedder(warm).metadata.compute(scheduler="sync")  # model load, cudnn/compile warm-up
        start = time.perf_counter()
        df = embedder(ImageTextPairDataset.from_webdataset(root)).metadata.compute(scheduler="sync")
        elapsed = time.perf_counter() - start
        assert df["error"].isna().all(), df["error"].dropna().head()
        return len(df) / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny model (smoke test), not ViT-L/14")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--images-per-shard", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--matmul", type=int, default=8192)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()

    import timm

    torch.manual_seed(0)
    model = timm.create_model(MODEL, pretrained=False, **(TINY if args.tiny else {})).eval().to(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "random_clip.pth")
        torch.save(model.state_dict(), ckpt)
        weights = os.path.join(tmp, "aesthetic_random.pth")
        from nemo_aesthetic.image.classifiers.aesthetic import upstream_mlp

        torch.save({f"layers.{k}": v for k, v in upstream_mlp().state_dict().items()}, weights)

        tflops = matmul_tflops(args.device, args.matmul)
        flops = flops_per_image(model, args.device)
        bound = tflops * 1e12 / flops
        mo = model_only(model, args.device, args.batch, args.seconds)
        e2e = end_to_end(args, weights, ckpt)

    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {name}; model: {MODEL}{' (tiny)' if args.tiny else ''}; batch {args.batch}; "
          f"{args.threads} decode threads; torch {torch.__version__}")
    print(f"matmul ({'bf16' if args.device.startswith('cuda') else 'fp32'} {args.matmul}^3): {tflops:.1f} TFLOP/s; "
          f"model: {flops / 1e9:.1f} GFLOP/image -> bound {bound:,.0f} images/s")
    print(f"model only:  {mo:,.0f} images/s = {mo / bound:.2f}x of the bound")
    print(f"end to end:  {e2e:,.0f} images/s = {e2e / bound:.2f}x of the bound "
          f"({args.shards} shards x {args.images_per_shard} JPEGs 256x256, tar bytes in, scores out)")


if __name__ == "__main__":
    main()
