"""The benchmark scripts still run (smoke mode), so the figures in BENCHMARKS.md stay reproducible."""
import os
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(__file__), "..", "bench")


def _run(*args):
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_gpu_throughput_smoke_on_cpu():
    out = _run(os.path.join(BENCH, "gpu_throughput.py"), "--tiny", "--device", "cpu", "--batch", "8",
               "--threads", "1", "--shards", "1", "--images-per-shard", "16", "--seconds", "0.5",
               "--matmul", "256")
    assert "model only:" in out and "end to end:" in out and "of the bound" in out


def test_graph_build_smoke(aesthetic_weights):
    out = _run(os.path.join(BENCH, "graph_build.py"), "40", aesthetic_weights)
    assert "tasks per shard" in out
