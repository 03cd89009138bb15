"""nemo_aesthetic on the GPU, piece by piece, on real photos at web sizes: the program (sections in
photo_pieces.py and photo_pipeline.py; what each measures in photo_common.py's docstring).

Usage (bench/gpu_check.py runs it): python bench/photo_bench.py [--tiny --device cpu] [--sections ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from photo_common import ARGS, MODEL, TINY, build_photos, left, record, write_shards  # noqa: E402
from photo_pieces import matmul_tflops, sec_decode, sec_forward, sec_host, sec_prep  # noqa: E402,F401
from photo_pipeline import aesthetic_weights, sec_cluster, sec_compile, sec_e2e, sec_lean  # noqa: E402

SECTIONS = [("data", None, 0), ("host", sec_host, 10), ("decode", sec_decode, 25), ("prep", sec_prep, 20),
            ("forward", sec_forward, 40), ("e2e", sec_e2e, 40), ("lean", sec_lean, 25),
            ("cluster", sec_cluster, 90), ("compile", sec_compile, 120)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--tiny", action="store_true", help="tiny model (dry runs), not ViT-L/14")
    p.add_argument("--photos", type=int, default=4096)
    p.add_argument("--per-shard", type=int, default=2048)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--progressive", type=float, default=0.15, help="fraction of progressive JPEGs")
    p.add_argument("--deadline", type=float, default=0, help="epoch seconds; sections that would overrun are skipped")
    p.add_argument("--jsonl", default=None)
    p.add_argument("--workdir", default="/tmp/photo_bench")
    p.add_argument("--sections", default=",".join(s for s, _, _ in SECTIONS))
    ARGS.__dict__.update(vars(p.parse_args()))
    wanted = set(ARGS.sections.split(","))

    import shutil
    shutil.rmtree(ARGS.workdir, ignore_errors=True)
    os.makedirs(ARGS.workdir)
    t = time.perf_counter()
    photos = build_photos(ARGS.photos, ARGS.progressive)
    root, warm_root = os.path.join(ARGS.workdir, "ds"), os.path.join(ARGS.workdir, "warm")
    tars = write_shards(root, photos, ARGS.per_shard)
    warm_tars = write_shards(warm_root, photos[:min(256, len(photos))], ARGS.per_shard)
    sizes = np.array([len(b) for b, _, _, _ in photos])
    mpix = np.array([w * h for _, w, h, _ in photos]) / 1e6
    record("data", "photos built", len(photos), "JPEGs", seconds=round(time.perf_counter() - t, 1),
           shards=len(tars), mean_kib=round(sizes.mean() / 1024, 1), mean_mpix=round(float(mpix.mean()), 3),
           progressive=int(sum(p for _, _, _, p in photos)))

    import torch

    dev = ARGS.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ctx = {"dev": dev, "root": root, "warm_root": warm_root, "tars": tars, "warm_tars": warm_tars,
           "blobs": [b for b, _, _, _ in photos], "prog": [p for _, _, _, p in photos]}
    import timm

    t = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(dev):
        ctx["model"] = timm.create_model(MODEL, pretrained=False, **(TINY if ARGS.tiny else {})).eval()
    ctx["weights"] = aesthetic_weights(ARGS.workdir)
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu"
    record("data", "model created on the device", time.perf_counter() - t, "s", device=name,
           model=MODEL + (" (tiny)" if ARGS.tiny else ""), torch=torch.__version__,
           aesthetic=os.path.basename(ctx["weights"]))
    failed = 0
    for sec, fn, need in SECTIONS:
        if fn is None or sec not in wanted:
            continue
        if left() < need:
            record(sec, "section", f"skipped: {left():.0f}s left, needs ~{need}s")
            continue
        try:
            fn(ctx)
        except Exception as exc:
            failed += 1
            record(sec, "section", f"FAILED {type(exc).__name__}: {exc}")
            traceback.print_exc()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
