"""Benchmark: what the GPU path and the model's precision modes cost in fidelity, on real photographs.

Random CLIP weights (the machine is offline) make a score comparison meaningless, so this compares
what the weights do not decide: the model input and the embedding direction.

* fidelity, model input: the tensor path (``TensorBatchPreprocessor`` on ``--device``: nvJPEG on
  CUDA) against the CPU reference path (PIL + timm's transform) on the same JPEGs: mean and max
  |difference| in normalised units (one 8-bit level is ~0.015).
* fidelity, embeddings: the GPU path as ``TimmImageEmbedder`` runs it on CUDA (tensor path input,
  bf16 weights under bf16 autocast) against the fp32 model on the reference input: cosine.
* precision modes, on the SAME reference tensors against fp32: bf16 autocast (bf16 weights),
  pure bf16 (``pure_bf16=True``: weights and activations bf16, no autocast), and with ``--compile``
  pure bf16 under ``torch.compile``: cosine mean / min and forward images/s.

Model: ``vit_large_patch14_clip_quickgelu_224`` with random weights (``--depth`` fewer blocks for a
CPU run, ``--tiny`` for a smoke run). Photos: ``tests/factory.web_photo`` (scikit-image's photos at
web sizes, 4:2:0/4:2:2/4:4:4, quality 75-95).
Usage: python bench/gpu_fidelity.py [--device cuda] [--photos 64] [--depth 24] [--compile]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from factory import web_photo  # noqa: E402

from nemo_aesthetic.engine import make_forward  # noqa: E402
from nemo_aesthetic.image.preprocess import cpu_transform, make_preprocessor  # noqa: E402
from nemo_aesthetic.image.tensor_preprocess import TensorBatchPreprocessor  # noqa: E402

MODEL = "vit_large_patch14_clip_quickgelu_224"


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def timed(fn, batch: torch.Tensor, device: str) -> tuple[torch.Tensor, float]:
    fn(batch[:2])  # warm-up (and compilation)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, len(batch) / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--depth", type=int, default=None, help="transformer blocks (ViT-L/14 has 24)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model (smoke runs)")
    parser.add_argument("--compile", action="store_true", help="also pure bf16 under torch.compile")
    args = parser.parse_args(argv)
    import timm

    kwargs = {"depth": 1, "embed_dim": 64, "num_heads": 2} if args.tiny else (
        {"depth": args.depth} if args.depth else {})
    torch.manual_seed(0)
    reference_model = timm.create_model(MODEL, pretrained=False, **kwargs).eval()
    dev = args.device
    photos = [web_photo(i, long_side=(500, 1024)) for i in range(args.photos)]
    print(f"device {torch.cuda.get_device_name() if dev.startswith('cuda') else 'cpu'}  model {MODEL} {kwargs or ''}"
          f"  photos {len(photos)}  torch {torch.__version__}")

    reference_prep = make_preprocessor(cpu_transform(reference_model))
    reference = torch.stack([reference_prep(p) for p in photos])
    prepared = TensorBatchPreprocessor(reference_model, dev)(photos)
    ours = prepared.images.float().cpu()
    kept = reference[prepared.rows]
    diff = (ours - kept).abs()
    print(f"fidelity model input, tensor path on {dev} vs PIL: mean |diff| {float(diff.mean()):.4f}  "
          f"max {float(diff.max()):.3f}  (images {len(prepared.rows)}/{len(photos)})")

    fp32_model = reference_model.to(dev)
    fp32 = make_forward(fp32_model, [], dev, autocast=False)
    base, rate32 = timed(lambda b: torch.as_tensor(fp32(b)[0]), reference, dev)
    print(f"precision fp32:                     cosine 1 (reference)   {rate32:8.1f} img/s")

    bf16_model = timm.create_model(MODEL, pretrained=False, **kwargs).eval()
    bf16_model.load_state_dict(reference_model.state_dict())
    bf16_model = bf16_model.to(dev, torch.bfloat16)

    def autocast_bf16(batch):
        with torch.inference_mode(), torch.autocast(device_type=torch.device(dev).type, dtype=torch.bfloat16):
            feats = bf16_model(batch.to(dev))
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu()

    pure = make_forward(bf16_model, [], dev, autocast=False, pure_bf16=True)
    modes = [("bf16 autocast (bf16 weights)", autocast_bf16), ("pure bf16", lambda b: torch.as_tensor(pure(b)[0]))]
    if args.compile:
        compiled = make_forward(torch.compile(bf16_model), [], dev, autocast=False, pure_bf16=True)
        modes.append(("pure bf16 + torch.compile", lambda b: torch.as_tensor(compiled(b)[0])))
    for name, fn in modes:
        got, rate = timed(fn, reference, dev)
        cos = cosine(got, base)
        print(f"precision {name + ':':28s} cosine mean {float(cos.mean()):.5f} min {float(cos.min()):.5f}  "
              f"{rate:8.1f} img/s  x{rate / rate32:.2f} vs fp32")

    gpu_path = autocast_bf16(prepared.images.to(dev))
    cos = cosine(gpu_path, base[prepared.rows])
    print(f"fidelity embeddings, GPU path (tensor input, bf16 autocast) vs fp32 on PIL input: cosine mean "
          f"{float(cos.mean()):.5f} min {float(cos.min()):.5f}")


if __name__ == "__main__":
    main()
