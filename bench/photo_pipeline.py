"""Photo bench sections: e2e, lean, cluster, compile (see photo_common.py)."""
from __future__ import annotations

import json  # noqa: F401
import os  # noqa: F401
import queue  # noqa: F401
import threading  # noqa: F401
import time  # noqa: F401

import numpy as np  # noqa: F401

from photo_common import *  # noqa: F401,F403  (moved out of gpu-check.sh as one program)
from photo_common import ARGS, MODEL, TINY, left, rate, record, sync  # noqa: F401
from photo_pieces import forward_rate, matmul_tflops  # noqa: F401


def aesthetic_weights(tmp: str) -> str:
    shared = os.environ.get("NEMO_AESTHETIC_SHARED")
    if shared:
        p = os.path.join(shared, "models", "sac+logos+ava1-l14-linearMSE.pth")
        if os.path.exists(p):
            return p
    import torch

    from nemo_aesthetic.image.classifiers.aesthetic import upstream_mlp

    p = os.path.join(tmp, "aesthetic_random.pth")
    torch.save({f"layers.{k}": v for k, v in upstream_mlp().state_dict().items()}, p)
    return p


def project_embedder(ctx, threads: int, decode: str, inject: bool = True):
    from nemo_aesthetic import distributed as nd
    from nemo_aesthetic.image.classifiers import AestheticClassifier
    from nemo_aesthetic.image.embedders import TimmImageEmbedder

    dev = ctx["dev"]
    emb = TimmImageEmbedder(MODEL, model_kwargs=TINY if ARGS.tiny else {}, batch_size=ARGS.batch,
                            num_threads_per_worker=threads, device=dev, decode=decode,
                            classifiers=[AestheticClassifier(model_path=ctx["weights"])])
    if inject:
        # Reuse the model already on the device instead of a second random init on the CPU (~10 s),
        # cast to bf16 as TimmImageEmbedder.load_embedding_model does on CUDA; everything after the
        # load is the project's own code.
        try:
            import copy

            import torch

            if "model_bf16" not in ctx:
                ctx["model_bf16"] = copy.deepcopy(ctx["model"]).to(torch.bfloat16) if dev.startswith("cuda") \
                    else ctx["model"]
            key = emb.model_cache_key(dev)
            if key not in nd._CACHE:
                nd._CACHE[key] = (ctx["model_bf16"], emb.load_preprocessor(ctx["model_bf16"], dev))
        except Exception as exc:
            print(f"(model injection failed, the embedder loads its own: {exc})")
    return emb


def sec_e2e(ctx):
    from nemo_aesthetic.datasets import ImageTextPairDataset

    dev = ctx["dev"]
    configs = ([("tensor", 8, 1), ("tensor", 8, 2), ("tensor", 16, 2), ("pil", 16, 1)] if dev.startswith("cuda")
               else [("pil", 2, 1), ("tensor", 2, 1), ("tensor", 2, 2)])
    for decode, threads, shards_at_once in configs:
        name = f'project pipeline decode="{decode}" threads={threads} batch={ARGS.batch} shards_at_once={shards_at_once}'
        compute = {"scheduler": "sync"} if shards_at_once == 1 else {"scheduler": "threads", "num_workers": shards_at_once}
        if left() < 25:
            record("e2e", name, "skipped (deadline)")
            continue
        try:
            emb = project_embedder(ctx, threads, decode)
            emb(ImageTextPairDataset.from_webdataset(ctx["warm_root"])).metadata.compute(**compute)
            with GpuBusy(dev) as busy:
                t = time.perf_counter()
                df = emb(ImageTextPairDataset.from_webdataset(ctx["root"])).metadata.compute(**compute)
                dt = time.perf_counter() - t
            errors = int(df["error"].notna().sum())
            record("e2e", name, (len(df) - errors) / dt, "img/s", rows=len(df), errors=errors,
                   gpu_busy_pct=busy.mean, of_bound=round((len(df) - errors) / dt / ctx.get("bound", 1e9), 3))
        except Exception as exc:
            record("e2e", name, f"FAILED {type(exc).__name__}: {exc}")
            traceback.print_exc()


def sec_lean(ctx):
    import fsspec
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from nemo_aesthetic.datasets.shards import iter_samples
    from nemo_aesthetic.image.preprocess import pick_image

    dev, model = ctx["dev"], ctx["model"]
    cuda = dev.startswith("cuda")
    fs = fsspec.filesystem("file")
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=dev).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=dev).view(1, 3, 1, 1) * 255
    bs = ARGS.batch

    def run(tars):
        q: queue.Queue = queue.Queue(maxsize=2)
        side = torch.cuda.Stream() if cuda else None
        err = []

        def prep(blobs):
            raws = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
            imgs = decode_jpeg(raws, mode=ImageReadMode.RGB, device=dev)
            x = lean_prep(imgs, mean, std)
            ev = None
            if cuda:
                ev = torch.cuda.Event()
                ev.record(side)
            return x, ev

        def producer():
            try:
                with torch.inference_mode(), (torch.cuda.stream(side) if cuda else contextlib.nullcontext()):
                    for tar in tars:
                        buf = []
                        for s in iter_samples(fs, tar):
                            img = pick_image(s.members)
                            if img is not None:
                                buf.append(img[1])
                            if len(buf) == bs:
                                q.put(prep(buf))
                                buf = []
                        if buf:
                            q.put(prep(buf))
            except Exception as exc:
                err.append(exc)
            finally:
                q.put(None)

        th = threading.Thread(target=producer, daemon=True)
        th.start()
        n = 0
        ac = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        with torch.inference_mode(), ac:
            while True:
                item = q.get()
                if item is None:
                    break
                x, ev = item
                if cuda:
                    torch.cuda.current_stream().wait_event(ev)
                    x.record_stream(torch.cuda.current_stream())
                f = torch.nn.functional.normalize(model(x).float(), dim=-1)
                f.cpu()
                n += x.shape[0]
        th.join()
        if err:
            raise err[0]
        return n

    run(ctx["warm_tars"])
    with GpuBusy(dev) as busy:
        t = time.perf_counter()
        n = run(ctx["tars"])
        dt = time.perf_counter() - t
    record("lean", f"prototype: tar thread -> batched nvJPEG + lean prep (side stream) -> forward, batch {bs}",
           n / dt, "img/s", images=n, gpu_busy_pct=busy.mean, of_bound=round(n / dt / ctx.get("bound", 1e9), 3))


def sec_cluster(ctx):
    from nemo_aesthetic import get_client
    from nemo_aesthetic.datasets import ImageTextPairDataset

    dev = ctx["dev"]
    if not dev.startswith("cuda"):
        record("cluster", "LocalCUDACluster", "skipped (no CUDA)")
        return
    t = time.perf_counter()
    with get_client(cluster_type="gpu", threads_per_worker=2, dashboard_address=None) as client:
        record("cluster", "LocalCUDACluster start", time.perf_counter() - t, "s",
               workers=len(client.scheduler_info()["workers"]))
        emb = project_embedder(ctx, 8, "tensor", inject=False)
        emb.device = None  # the worker picks cuda itself
        t = time.perf_counter()
        emb(ImageTextPairDataset.from_webdataset(ctx["warm_root"])).metadata.compute()
        record("cluster", "warm-up incl. model load on the worker", time.perf_counter() - t, "s")
        with GpuBusy(dev) as busy:
            t = time.perf_counter()
            df = emb(ImageTextPairDataset.from_webdataset(ctx["root"])).metadata.compute()
            dt = time.perf_counter() - t
        errors = int(df["error"].notna().sum())
        record("cluster", f'project pipeline on LocalCUDACluster (2 threads/worker), decode="tensor" threads=8 batch={ARGS.batch}',
               (len(df) - errors) / dt, "img/s", rows=len(df), errors=errors, gpu_busy_pct=busy.mean)
        client.cluster.close()


def sec_compile(ctx):
    import torch

    dev, model = ctx["dev"], ctx["model"]
    if not dev.startswith("cuda"):
        record("compile", "torch.compile", "skipped (no CUDA)")
        return
    cm = torch.compile(model)
    x = torch.randn(ARGS.batch, 3, 224, 224, device=dev)
    t = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        cm(x)
        sync(dev)
    record("compile", f"torch.compile first call (batch {ARGS.batch})", time.perf_counter() - t, "s")
    r = forward_rate(cm, dev, ARGS.batch, 3.0, autocast=torch.bfloat16)
    record("compile", f"torch.compile autocast bf16, batch {ARGS.batch}", r, "img/s",
           of_bound=round(r / ctx.get("bound", 1e9), 3))
