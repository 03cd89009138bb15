"""Semantic dedup: the 1.x workflow on Dask against an in-process torch reference, and a large run
with bounded worker memory.

    python bench/semdedup.py                         # 100k x 768: workflow vs reference, ratio
    python bench/semdedup.py --big-rows 5000000      # and 5M x 768 (about 15 GB on disk), peak worker RSS

Part 1 writes ``--rows`` random unit embeddings (with planted exact copies) to Parquet, then times
(a) the reference: one process reads the files into one torch tensor, runs ``--iters`` Lloyd
iterations from random centroids, assigns every row, and per cluster takes each row's maximum
cosine similarity to the rows before it (one matmul per cluster); (b)
``SemanticDeduplicationWorkflow(...).run()`` with the same clusters and iterations on a Dask
LocalCluster of ``--workers`` processes. Both count the rows at similarity >= 1 - eps. It prints
both times and ``reference / workflow`` (the workflow's speed as a share of the reference's; the
goal is >= 0.5x), ``--repeats`` times alternated, then the ratio of the best time of each (the
first run of each is cold: the workers' first tasks import and warm up; a user's long-lived
cluster is warm). This machine's timings vary by up to 2x from one minute to the next.
The reference holds every embedding in one process, which the workflow never does.

Part 2 (``--big-rows N``) streams N x 768 embeddings to Parquet parts (never all in memory), then
runs the workflow with ``fit_data_fraction`` and ``--big-clusters``, sampling each worker's RSS
every 0.5 s: it prints the wall time and the peak RSS of any worker (the workers have a
``--memory-limit``; Dask would pause or restart a worker that outgrew it).
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_parts(folder: str, rows: int, dim: int, rows_per_part: int, seed: int, copies: float = 0.01) -> None:
    """Random unit vectors, ``copies`` of each part repeated from earlier rows of the part, one part
    in memory at a time."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for start in range(0, rows, rows_per_part):
        n = min(rows_per_part, rows - start)
        part = rng.standard_normal((n, dim), dtype=np.float32)
        repeated = int(n * copies)
        if repeated and n > repeated:
            part[n - repeated:] = part[rng.choice(n - repeated, repeated, replace=False)]
        values = pa.array(part.reshape(-1))
        table = pa.table({"id": pa.array(np.arange(start, start + n, dtype=np.int64)),
                          "embedding": pa.FixedSizeListArray.from_arrays(values, dim)})
        pq.write_table(table, os.path.join(folder, f"part_{start // rows_per_part:05d}.parquet"))
        del part, values, table


def reference(folder: str, clusters: int, iters: int, eps: float, seed: int, device: str = "cpu") -> tuple[float, int]:
    """(seconds, duplicates): the same work in one process with torch, data read included."""
    import torch

    start = time.perf_counter()
    table = pq.read_table(folder, columns=["embedding"])
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    x = torch.from_numpy(column.flatten().to_numpy().reshape(-1, dim).copy()).to(device)
    x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True)
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(len(x), generator=gen)[:clusters].to(device)].clone()
    for _ in range(iters + 1):  # the last pass is the assignment
        labels = torch.cat([torch.argmax(chunk @ centroids.T, dim=1) for chunk in x.split(65536)])
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=clusters).clamp_min(1).unsqueeze(1)
        centroids = sums / counts
    duplicates = 0
    order = torch.argsort(labels)
    bounds = torch.cumsum(torch.bincount(labels, minlength=clusters), 0).tolist()
    lo = 0
    for hi in bounds:
        members = x[order[lo:hi]]
        lo = hi
        if len(members) < 2:
            continue
        sims = torch.triu(members @ members.T, diagonal=1)  # row i against the rows j < i... as columns
        duplicates += int((sims.max(dim=0).values[1:] >= 1 - eps).sum())
    return time.perf_counter() - start, duplicates


class PeakRSS:
    """The largest RSS any worker process reached, sampled every ``interval`` seconds."""

    def __init__(self, client, interval: float = 0.5):
        import psutil

        self.processes = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
        self.peak, self.interval, self._stop = 0, interval, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            for p in self.processes:
                try:
                    self.peak = max(self.peak, p.memory_info().rss)
                except Exception:  # a restarted worker: its old process is gone
                    pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def workflow(folder: str, out: str, clusters: int, iters: int, eps: float, seed: int, fraction=None) -> tuple[float, int]:
    from nemo_aesthetic.stages.deduplication.semantic import SemanticDeduplicationWorkflow

    start = time.perf_counter()
    result = SemanticDeduplicationWorkflow(
        input_path=folder, output_path=out, n_clusters=clusters, id_field="id", embedding_field="embedding",
        max_iter=iters, tol=0.0, random_state=seed, fit_data_fraction=fraction, eps=eps, verbose=False).run()
    elapsed = time.perf_counter() - start
    print(f"  workflow steps: k-means {result.get_metadata('kmeans_time'):.1f} s, pairwise "
          f"{result.get_metadata('pairwise_time'):.1f} s, total {result.get_metadata('total_time'):.1f} s")
    return elapsed, int(result.get_metadata("num_duplicates"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--iters", type=int, default=5, help="Lloyd iterations (both sides; the workflow's max_iter)")
    p.add_argument("--eps", type=float, default=0.01)
    p.add_argument("--rows-per-part", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each side; the first of each is cold (the workers' first tasks, first allocations)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="6GiB", help="per worker")
    p.add_argument("--big-rows", type=int, default=0, help="also run this many rows (e.g. 5000000); 0: skip")
    p.add_argument("--big-clusters", type=int, default=2000,
                   help="about sqrt(rows): assigning rows costs rows x k, the pairwise step rows x rows / k")
    p.add_argument("--big-fraction", type=float, default=0.05)
    p.add_argument("--big-iters", type=int, default=5)
    p.add_argument("--big-rows-per-part", type=int, default=100_000)
    p.add_argument("--workdir", default=None, help="where the Parquet goes (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    import torch

    from nemo_aesthetic import get_client

    torch.set_num_threads(a.workers)  # the reference gets the cores the workers get
    work = a.workdir or tempfile.mkdtemp(prefix="semdedup-bench-")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cluster_type = "gpu" if device == "cuda" else "cpu"
    kwargs = {} if device == "cuda" else {"n_workers": a.workers, "threads_per_worker": 1,
                                         "memory_limit": a.memory_limit}
    client = get_client(cluster_type, dashboard_address=":0", **kwargs)
    try:
        small = os.path.join(work, "small")
        write_parts(small, a.rows, a.dim, a.rows_per_part, a.seed)
        print(f"data: {a.rows:,} x {a.dim} float32 ({a.rows * a.dim * 4 / 2**20:,.0f} MiB) in "
              f"{-(-a.rows // a.rows_per_part)} Parquet part(s); {a.clusters} clusters, {a.iters} Lloyd iterations, "
              f"eps {a.eps}; device {device}, {a.workers} worker(s) x 1 thread vs torch with {a.workers} thread(s)")
        ref_times, flow_times = [], []
        for run in range(1, a.repeats + 1):  # alternated, so both meet the same moments of the machine
            ref_s, ref_dups = reference(small, a.clusters, a.iters, a.eps, a.seed, device)
            print(f"run {run} reference (one process, all rows in memory, torch on {device}): {ref_s:7.2f} s   "
                  f"{ref_dups:,} duplicates")
            flow_s, flow_dups = workflow(small, os.path.join(work, "small_out"), a.clusters, a.iters, a.eps, a.seed)
            print(f"run {run} workflow  (Dask, SemanticDeduplicationWorkflow): {flow_s:7.2f} s   "
                  f"{flow_dups:,} duplicates   (reference / workflow {ref_s / flow_s:.2f}x)", flush=True)
            ref_times.append(ref_s)
            flow_times.append(flow_s)
        print(f"workflow speed / reference speed, best of {a.repeats} each: {min(ref_times) / min(flow_times):.2f}x "
              f"(goal >= 0.5x; run 1 of each is cold: {ref_times[0] / flow_times[0]:.2f}x)", flush=True)
        shutil.rmtree(os.path.join(work, "small_out"), ignore_errors=True)
        if a.big_rows:
            big = os.path.join(work, "big")
            start = time.perf_counter()
            parts = -(-a.big_rows // a.big_rows_per_part)
            if len(glob.glob(os.path.join(big, "part_*.parquet"))) != parts:  # (a --workdir of an earlier run: kept)
                shutil.rmtree(big, ignore_errors=True)
                write_parts(big, a.big_rows, a.dim, a.big_rows_per_part, a.seed + 1)
            print(f"big data: {a.big_rows:,} x {a.dim} float32 ({a.big_rows * a.dim * 4 / 2**30:,.1f} GiB) in "
                  f"{-(-a.big_rows // a.big_rows_per_part)} Parquet parts, written in {time.perf_counter() - start:.0f} s",
                  flush=True)
            with PeakRSS(client) as peak:
                big_s, big_dups = workflow(big, os.path.join(work, "big_out"), a.big_clusters, a.big_iters, a.eps,
                                           a.seed, fraction=a.big_fraction)
            print(f"big workflow: {big_s:.0f} s   {big_dups:,} duplicates   {a.big_clusters} clusters, "
                  f"fit_data_fraction {a.big_fraction}   peak worker RSS {peak.peak / 2**30:.2f} GiB "
                  f"(memory limit {a.memory_limit} per worker)")
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
