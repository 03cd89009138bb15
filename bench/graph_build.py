"""Driver time to build the task graphs of a large dataset, per entry point, against dd.read_parquet.

Writes N metadata-only shards (a one-row Parquet and an empty tar each; LAION is ~200,000 shards),
then times, on the driver only (nothing is computed, no model is loaded), each entry point's graph
up to the optimized task graph dask would send to the scheduler:

- baseline: ``dd.read_parquet`` of the same files;
- open: ``ImageTextPairDataset.from_webdataset``;
- embed + score: ``TimmImageEmbedder(classifiers=[AestheticClassifier])(ds)``;
- save_metadata: the write of every shard's Parquet over the embedded dataset;
- select_top: the marking pass over the embedded dataset (one allowance per shard);
- to_webdataset: the output-shard writes over the kept rows (one kept row per shard);
- score summary: the first pass of ``nemo-aesthetic score``'s summary over the written Parquet files
  (their score and error columns, per-shard counts merged by a tree: ``report.aggregates``);
- report: the report's first pass over the opened metadata (counts and per-shard top-k merged by a
  tree: ``report.summary.first_pass``; the score columns added partition-wise, as these shards have none).

``open`` is not only a graph: it reads every footer (on local threads here, on the workers of a
cluster), so it is timed as the driver waits for it.

It prints seconds, ms per shard, tasks per shard and graph bytes per shard (a per-shard list copied
into every task would show there), then the open + embed + score + save_metadata total
and its ratio to the baseline. (Pickling the graph, to count its bytes, is not timed.)

    python bench/graph_build.py [SIZES=2000] [WEIGHTS] [--keep DIR] [--reshard-max N]

SIZES is a comma-separated list (e.g. 2000,20000,200000). The largest set of shards is written
once (the first DISTINCT for real, the rest hard links to them); smaller sizes are hard links to
its first shards. ``--keep DIR`` writes them into DIR and
leaves them there for the next run (otherwise a temporary directory, deleted at the end).
"""
import argparse
import os
import posixpath
import shutil
import tempfile
import time

import cloudpickle
import fsspec
import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.datasets.resharding import output_shard_writes, write_partition
from nemo_aesthetic.datasets.selection import _mark, _with_keep
from nemo_aesthetic.engine.partitions import map_shards
from nemo_aesthetic.image.classifiers import AestheticClassifier
from nemo_aesthetic.image.embedders import TimmImageEmbedder
from nemo_aesthetic.report import aggregates
from nemo_aesthetic.report.summary import first_pass

# Only the predictor's shape matters here: any file of that shape will do (second argument).
WEIGHTS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "models", "sac+logos+ava1-l14-linearMSE.pth")


#: Shards written for real; beyond this many, shard i is a hard link to shard i % DISTINCT (writing
#: 200,000 Parquet files takes hours on a small machine; building a graph reads only names and footers).
DISTINCT = 20000


def write_shards(root: str, n: int) -> None:
    """Shards 0..n-1 in ``root`` (those already there are kept)."""
    os.makedirs(root, exist_ok=True)
    table = pa.table({"key": ["000000000"], "caption": ["x"]})
    for i in range(n):
        if os.path.exists(f"{root}/{i:06d}.parquet"):
            continue
        if i >= DISTINCT:
            for ext in ("parquet", "tar"):
                os.link(f"{root}/{i % DISTINCT:06d}.{ext}", f"{root}/{i:06d}.{ext}")
            continue
        pq.write_table(table.set_column(0, "key", pa.array([f"{i:06d}000"])), f"{root}/{i:06d}.parquet")
        open(f"{root}/{i:06d}.tar", "wb").close()


def linked_subset(source: str, root: str, n: int) -> None:
    """The first ``n`` shards of ``source`` as hard links in ``root`` (no data written)."""
    if os.path.isdir(root) and len(os.listdir(root)) == 2 * n:
        return
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    for i in range(n):
        for ext in ("parquet", "tar"):
            os.link(f"{source}/{i:06d}.{ext}", f"{root}/{i:06d}.{ext}")


def driver_graph(*collections) -> dict:
    """What ``compute`` builds on the driver before it submits: the optimized, materialized graph."""
    from dask._expr import FinalizeCompute

    return dict(FinalizeCompute(dask.base.collections_to_expr(collections, True)).optimize().__dask_graph__())


def graph_bytes(graph: dict) -> int:
    """The graph pickled as the distributed client sends it (in one piece: shared objects once)."""
    return len(cloudpickle.dumps(graph, protocol=5))


def measure(root: str, n: int, weights: str, reshard_max: int | None = None) -> dict:
    rows = {}

    def timed(name, build):
        t0 = time.perf_counter()
        result, graph = build()
        seconds = time.perf_counter() - t0
        rows[name] = (seconds, len(graph) if graph is not None else 0,
                      graph_bytes(graph) if graph else 0)
        return result

    timed("dd.read_parquet (baseline)", lambda: (None, driver_graph(dd.read_parquet(root))))
    ds = timed("open (from_webdataset)", lambda: (ImageTextPairDataset.from_webdataset(root), None))
    embedder = TimmImageEmbedder("vit_large_patch14_clip_quickgelu_224.openai", pretrained=True,
                                 classifiers=[AestheticClassifier(model_path=os.path.abspath(weights))])
    scored = timed("embed + score", lambda: (lambda s: (s, driver_graph(s.metadata)))(embedder(ds)))
    targets = [posixpath.join(root, "out", f"{s.name}.parquet") for s in scored.shards]
    # as save_metadata builds it: one write per shard, each carrying its own file name, summed
    timed("save_metadata", lambda: (None, driver_graph(map_shards(
        write_partition, scored.metadata, targets, None, None, {}, meta=pd.Series([], dtype="int64"),
        label="save-shard-metadata").sum())))
    # as select_top's last pass builds it: each shard's task carries its own allowance
    allowance = [1] * n
    marked = timed("select_top (mark)", lambda: (lambda m: (m, driver_graph(m)))(map_shards(
        _mark, scored.metadata, allowance, "aesthetic_score", "keep", 5.0,
        meta=_with_keep(scored.metadata._meta, "keep"), label="mark-top")))

    def reshard():  # as to_webdataset builds it, from one kept row per shard, 10,000 samples per output
        _, writes = output_shard_writes(marked, scored.shards, [1] * n, 10000, 5, set(), None, None, root, "key", None)
        return None, driver_graph(writes)

    if reshard_max is None or n <= reshard_max:
        timed("to_webdataset (write)", reshard)
    names = [s.name for s in ds.shards]
    fs = fsspec.filesystem("file")
    timed("score summary (counts)", lambda: (None, driver_graph(aggregates.shard_stats(
        aggregates.scored_files(fs, [s.parquet for s in ds.shards]), names))))
    timed("report (counts + top-k)", lambda: (None, driver_graph(first_pass(
        ds.metadata.assign(aesthetic_score=1.0, error=None)[["key", "caption", "aesthetic_score", "error"]],
        names, "key", "caption", 20))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="?", default="2000")
    parser.add_argument("weights", nargs="?", default=WEIGHTS)
    parser.add_argument("--keep", help="write the shards here and keep them for the next run")
    parser.add_argument("--reshard-max", type=int, help="measure to_webdataset only up to this many shards")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    base = args.keep or tempfile.mkdtemp(prefix="graph_build-")
    try:
        source = os.path.join(base, f"all-{sizes[-1]}")
        t0 = time.perf_counter()
        write_shards(source, sizes[-1])
        print(f"shards ready in {time.perf_counter() - t0:.0f} s ({sizes[-1]} in {source})")
        open_total = {}
        for n in sizes:
            root = source if n == sizes[-1] else os.path.join(base, f"first-{n}")
            if root != source:
                linked_subset(source, root, n)
            rows = measure(root, n, args.weights, args.reshard_max)
            base_s = rows["dd.read_parquet (baseline)"][0]
            print(f"\nshards: {n}")
            for name, (seconds, tasks, size) in rows.items():
                tasks_text = f", {tasks / n:.1f} tasks and {size / n:,.0f} B of graph per shard" if tasks else ""
                print(f"{name:28s} {seconds:8.2f} s  {1000 * seconds / n:6.3f} ms/shard{tasks_text}")
            total = sum(rows[k][0] for k in ("open (from_webdataset)", "embed + score", "save_metadata"))
            open_total[n] = total
            print(f"open + embed + score + save_metadata: {total:.2f} s = {1000 * total / n:.3f} ms/shard "
                  f"= {total / base_s:.2f}x dd.read_parquet")
        if len(sizes) > 1:
            first = sizes[0]
            for n in sizes[1:]:
                print(f"growth {first} -> {n} shards ({n / first:.0f}x): {open_total[n] / open_total[first]:.1f}x time")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
