"""How long it takes to build the task graph for a large dataset, and how many tasks per shard.

Writes N metadata-only shards (one-row Parquet, empty tar), then times from_webdataset +
embedder(...) + AestheticClassifier graph construction (nothing is computed, no model loaded)
and counts graph tasks. Baseline in the same run: dd.read_parquet over the same files.

    python bench/graph_build.py [N_SHARDS=2000]
"""
import os
import sys
import tempfile
import time

import dask.dataframe as dd
import pyarrow as pa
import pyarrow.parquet as pq

from nemo_aesthetic.datasets import ImageTextPairDataset
from nemo_aesthetic.image.classifiers import AestheticClassifier
from nemo_aesthetic.image.embedders import TimmImageEmbedder

# Only the predictor's shape matters here: any file of that shape will do (second argument).
WEIGHTS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "models", "sac+logos+ava1-l14-linearMSE.pth")


def main(n_shards: int, weights: str = WEIGHTS) -> None:
    with tempfile.TemporaryDirectory() as root:
        for i in range(n_shards):
            pq.write_table(pa.table({"key": [f"{i:05d}0000"], "caption": ["x"]}), f"{root}/{i:05d}.parquet")
            open(f"{root}/{i:05d}.tar", "wb").close()

        t0 = time.perf_counter()
        baseline = dd.read_parquet(root)
        baseline_tasks = len(baseline.__dask_graph__())
        t_base = time.perf_counter() - t0

        t0 = time.perf_counter()
        ds = ImageTextPairDataset.from_webdataset(root)
        t_open = time.perf_counter() - t0
        embedder = TimmImageEmbedder("vit_large_patch14_clip_quickgelu_224.openai", pretrained=True,
                                     classifiers=[AestheticClassifier(model_path=os.path.abspath(weights))])
        t0 = time.perf_counter()
        scored = embedder(ds)
        graph = scored.metadata.__dask_graph__()
        t_graph = time.perf_counter() - t0

    print(f"shards: {n_shards}")
    print(f"dd.read_parquet (baseline): {t_base:.2f} s, {baseline_tasks} tasks")
    print(f"from_webdataset: {t_open:.2f} s (lists the directory, reads one Parquet footer)")
    print(f"embed + score graph: {t_graph:.2f} s, {len(graph)} tasks = {len(graph) / n_shards:.1f} tasks per shard")
    print(f"ratio open+graph / baseline: {(t_open + t_graph) / t_base:.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000, *sys.argv[2:3])
