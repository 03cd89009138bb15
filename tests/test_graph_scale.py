"""The driver's work grows linearly with the shards (LAION is ~200,000): time, tasks and graph bytes
per shard measured by ``bench/graph_build.py``'s own code at two sizes, 10x apart."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))


def test_driver_time_tasks_and_graph_bytes_grow_linearly(tmp_path, aesthetic_weights):
    import graph_build

    small, large = 300, 3000
    graph_build.write_shards(str(tmp_path / "all"), large)
    graph_build.linked_subset(str(tmp_path / "all"), str(tmp_path / "small"), small)
    steps = ("open (from_webdataset)", "embed + score", "save_metadata")

    def run(root, n):  # each step's best of three: the machine is shared, and a GC pass can land anywhere
        tries = [graph_build.measure(root, n, aesthetic_weights) for _ in range(3)]
        return {name: (min(t[name][0] for t in tries), *tries[0][name][1:]) for name in tries[0]}

    a, b = run(str(tmp_path / "small"), small), run(str(tmp_path / "all"), large)
    growth = sum(b[s][0] for s in steps) / sum(a[s][0] for s in steps)
    assert growth <= 15, (growth, a, b)  # quadratic graphs took 100x here
    summaries = ("score summary (counts)", "report (counts + top-k)")  # their per-shard merges form a tree
    growth = sum(b[s][0] for s in summaries) / sum(a[s][0] for s in summaries)
    assert growth <= 15, (growth, a, b)
    for name, (_, tasks, size) in b.items():
        if tasks:  # the same tasks per shard, and no per-shard list copied into each task
            assert tasks / large == pytest.approx(a[name][1] / small, rel=0.01), name
            assert size / large <= 1.5 * a[name][2] / small, (name, size / large, a[name][2] / small)
