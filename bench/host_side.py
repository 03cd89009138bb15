"""Benchmark: the host side of the GPU path, measured on the CPU (issue 22).

What the host must do per image for the GPU to be fed at ~3,000 images/s, measured here with the
tensor path running on the CPU (torchvision's libjpeg decoder standing in for nvJPEG, the same
batched calls). Data: real photographs at web sizes (``tests/factory.web_photo``, long side
640-1024 px). Model: timm's CLIP ViT-L/14 transform config (224 px, bicubic, CLIP mean/std).
Torch intra-op threads = 1. Each line prints images (or samples) per second and, where there is
one, a ratio against a baseline measured in the same run:

* prep, 1 thread: ``TensorBatchPreprocessor`` on batches of 32 (decode + resize + crop + normalise).
* prep, ``DeviceBatchPreprocessor`` with prep_threads=1 vs 2 (batches prepared in parallel).
* refused image in a batch: one image the decoder refuses in each batch of 32; the old
  one-image-at-a-time retry vs halving (decode calls per batch and images/s).
* JPEG structure check (``jpeg_header`` + ``device_decodable``): microseconds per image.
* progressive JPEGs (go to PIL): PIL-path images/s per thread vs baseline JPEGs on the tensor path.
* tar parsing: samples/s and microseconds per sample (3 members per sample) of ``iter_samples``
  against the reader before issue 22 item 10 (tarfile's stream mode, ``tests/stream_mode_reader.py``),
  runs interleaved, and what each would take of one core at 3,000 samples/s.
* prep with parsing overlapped: the tensor path's prep (2 prep threads) fed by a reader thread
  parsing the shard (``prefetch``, as the embedders read), with each reader; the same prep from
  bytes already in memory is the ceiling.

Usage: python bench/host_side.py [--images 96] [--repeat 3]
"""
from __future__ import annotations

import argparse
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import fsspec
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from factory import oversampled, web_photo  # noqa: E402

from stream_mode_reader import stream_mode_samples  # noqa: E402

from nemo_aesthetic.datasets.shards import iter_samples  # noqa: E402
from nemo_aesthetic.image.jpeg_markers import device_decodable, jpeg_header  # noqa: E402
from nemo_aesthetic.image.preprocess import cpu_transform, make_preprocessor  # noqa: E402
from nemo_aesthetic.image.tensor_preprocess import DeviceBatchPreprocessor, TensorBatchPreprocessor  # noqa: E402
from nemo_aesthetic.prefetch import prefetch  # noqa: E402

BATCH = 32


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def batches(items: list, size: int = BATCH) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class OneByOne(TensorBatchPreprocessor):
    """The retry before issue 22: a failed batched call decodes every image of it one by one."""

    def _decode_or_split(self, raws, mode, decode_jpeg):
        try:
            return list(decode_jpeg(raws, mode=mode, device=self.device))
        except RuntimeError:
            out = []
            for raw in raws:
                try:
                    out.append(decode_jpeg(raw, mode=mode, device=self.device))
                except RuntimeError:
                    out.append(None)
            return out


def refusing_decoder(refused: set[bytes], calls: list):
    import torchvision.io

    real = torchvision.io.decode_jpeg

    def decode(data, *args, **kwargs):
        calls.append(1)
        raws = data if isinstance(data, list) else [data]
        if any(raw.numpy().tobytes() in refused for raw in raws):
            raise RuntimeError("refused")  # as nvJPEG: one image it does not take fails the call
        return real(data, *args, **kwargs)

    return decode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import timm
    import torchvision.io

    model = timm.create_model("vit_large_patch14_clip_quickgelu_224", pretrained=False, depth=1, embed_dim=64,
                              num_heads=2).eval()
    photos = [web_photo(i, long_side=(640, 1024)) for i in range(args.images)]
    progressive = [web_photo(i, progressive=True, long_side=(640, 1024)) for i in range(args.images // 2)]
    n = len(photos)
    batcher = TensorBatchPreprocessor(model, "cpu")
    results = {}

    t = best(lambda: [batcher(b) for b in batches(photos)], args.repeat)
    results["prep"] = n / t
    print(f"prep, tensor path, 1 thread:                 {n / t:8.1f} images/s")
    for threads in (1, 2):
        def run(threads=threads):
            with DeviceBatchPreprocessor(batcher, threads=2, prep_threads=threads) as prep:
                for wait in [prep.start(b) for b in batches(photos)]:
                    wait()
        t = best(run, args.repeat)
        results[f"prep_threads={threads}"] = n / t
        print(f"prep, DeviceBatchPreprocessor prep_threads={threads}: {n / t:8.1f} images/s"
              + (f"   x{results['prep_threads=2'] / results['prep_threads=1']:.2f} vs 1 thread" if threads == 2 else ""))

    refused = {b[len(b) // 2] for b in batches(photos)}
    real = torchvision.io.decode_jpeg
    for name, cls in (("one by one (before)", OneByOne), ("halving (now)", TensorBatchPreprocessor)):
        calls: list = []
        torchvision.io.decode_jpeg = refusing_decoder(refused, calls)
        try:
            retry = cls(model, "cpu")
            t = best(lambda: [retry(b) for b in batches(photos)], args.repeat)
        finally:
            torchvision.io.decode_jpeg = real
        per_batch = len(calls) / args.repeat / len(batches(photos))
        results[name] = n / t
        print(f"one refused image per batch, {name:20s} {n / t:8.1f} images/s, {per_batch:5.1f} decode calls/batch")

    t = best(lambda: [device_decodable(jpeg_header(b), b) for b in photos], args.repeat)
    print(f"JPEG structure check:                        {t / n * 1e6:8.1f} us/image "
          f"(mean {sum(map(len, photos)) / n / 1024:.0f} KiB)")

    pil = make_preprocessor(cpu_transform(model))
    t_pil = best(lambda: [pil(b) for b in progressive], args.repeat)
    m = len(progressive)
    print(f"progressive JPEGs via PIL, 1 thread:         {m / t_pil:8.1f} images/s   "
          f"x{(m / t_pil) / results['prep']:.2f} of the tensor path per thread")

    with tempfile.TemporaryDirectory() as tmp:
        tar_path = write_shard(Path(tmp) / "shard.tar", photos * 4)
        tar_parsing(tar_path, 4 * n, args.repeat)
        parsing_overlapped(tar_path, batcher, 4 * n, args.repeat)


def write_shard(path: Path, images: list[bytes]) -> Path:
    """img2dataset's members per sample: the image, its caption, its json."""
    with tarfile.open(path, "w") as tar:
        for i, data in enumerate(images):
            for ext, payload in (("jpg", data), ("txt", b"a caption"), ("json", b'{"key": 1}')):
                info = tarfile.TarInfo(f"{i:08d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


READERS = (("stream mode (before)", stream_mode_samples), ("iter_samples (now)", iter_samples))


def tar_parsing(path: Path, samples: int, repeat: int) -> None:
    """Samples/s of each reader, runs interleaved; the old reader (tarfile's stream mode) is the baseline."""
    fs = fsspec.filesystem("file")
    times: dict = {name: [] for name, _ in READERS}
    for _ in range(max(repeat, 3)):
        for name, reader in READERS:
            times[name].append(best(lambda reader=reader: sum(1 for _ in reader(fs, str(path))), 1))
    base = min(times[READERS[0][0]])
    for name, _ in READERS:
        t = min(times[name])
        print(f"tar parsing, {name:22s} {samples / t:8.1f} samples/s, {t / samples * 1e6:6.1f} us/sample"
              f"   x{base / t:.2f} vs stream mode; at 3,000 samples/s: {3000 * t / samples:.2f} of a core")


def parsing_overlapped(path: Path, batcher, samples: int, repeat: int) -> None:
    """The tensor path's prep (2 prep threads) fed by a reader thread parsing the shard, as the
    embedders read it (``prefetch``); prep from bytes already in memory is the ceiling."""
    fs = fsspec.filesystem("file")
    images = [s.members[0][2] for s in iter_samples(fs, str(path))]

    def prep(items) -> None:
        with DeviceBatchPreprocessor(batcher, threads=2, prep_threads=2) as pool:
            waits, chunk = [], []
            for data in items:
                chunk.append(data)
                if len(chunk) == BATCH:
                    waits.append(pool.start(chunk))
                    chunk = []
                if len(waits) > 2:
                    waits.pop(0)()
            waits += [pool.start(chunk)] if chunk else []
            for wait in waits:
                wait()

    cases = [("bytes in memory (ceiling)", lambda: images)] + [
        (f"parsed by {name}", lambda reader=reader: (s.members[0][2] for s in prefetch(
            reader(fs, str(path)), depth=64, name="shard-reader"))) for name, reader in READERS]
    times: dict = {name: [] for name, _ in cases}
    for _ in range(repeat):
        for name, items in cases:
            times[name].append(best(lambda items=items: prep(items()), 1))
    ceiling = min(times[cases[0][0]])
    for name, _ in cases:
        t = min(times[name])
        print(f"prep with parsing overlapped, {name:32s} {samples / t:8.1f} images/s   x{ceiling / t:.2f} of the ceiling")

if __name__ == "__main__":
    main()
