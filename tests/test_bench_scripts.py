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
    """The GPU bench's code path on the CPU: real photos through decode="tensor" (torchvision's CPU
    decoder), one and two shards at a time, the stage front, and the fidelity check against the
    PIL path."""
    out = _run(os.path.join(BENCH, "gpu_throughput.py"), "--tiny", "--device", "cpu", "--batch", "8",
               "--threads", "1", "--shards", "2", "--images-per-shard", "8", "--unique", "10",
               "--progressive", "0.2", "--seconds", "0.5", "--matmul", "256")
    assert "model only:" in out and out.count("of the bound") == 4, out
    assert "stage front (1 partition at a time):" in out and "(16 images)" in out, out
    assert "2 shards x 8 real photos (10 distinct" in out and "2 progressive" in out, out
    assert "1 shard at a time" in out and "2 shards at a time" in out and "LocalCUDACluster: skipped" in out, out
    assert "-> PASS" in out and "over 8 photos" in out, out


def test_graph_build_smoke(aesthetic_weights):
    out = _run(os.path.join(BENCH, "graph_build.py"), "20,40", aesthetic_weights)
    assert "shards: 40" in out and "to_webdataset (write)" in out and "growth 20 -> 40 shards" in out, out


def test_score_precomputed_smoke():
    from conftest import AESTHETIC_WEIGHTS, skip_without_shared

    skip_without_shared(AESTHETIC_WEIGHTS, "the real LAION aesthetic weights")
    out = _run(os.path.join(BENCH, "score_precomputed.py"), "--smoke")
    assert "score npy / np.load:" in out and "score npy, cold / np.load, cold:" in out


def test_gpu_check_steps_run_on_cpu(tmp_path):
    """`bash bench/gpu-check.sh` (bench/gpu_check.py) in its CPU rehearsal: the fidelity, host and
    photo steps run and reach the summary (the GPU itself is only on a lent machine)."""
    env = dict(os.environ, DRY_RUN="1", PYTHON=sys.executable, OUT=str(tmp_path / "out"),
               GPU_CHECK_WORK=str(tmp_path / "work"), GPU_CHECK_STEPS="fidelity,host,photo",
               FIDELITY_ARGS="--tiny --device cpu --photos 4", HOST_ARGS="--images 8 --repeat 1",
               PHOTO_ARGS="--sections data,host --photos 16", GPU_CHECK_BUDGET="500")
    repo = os.path.join(os.path.dirname(__file__), "..")
    out = subprocess.run(["bash", os.path.join(BENCH, "gpu-check.sh")], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=560)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    for step in ("fidelity", "host", "photo"):
        assert f"ok       {step}" in summary, summary
    assert "fidelity model input" in summary and "precision pure bf16" in summary, summary
    assert "decode calls/batch" in summary and "tar parsing" in summary, summary
    assert "host " in summary and "FAILED" not in summary, summary


def test_sources_smoke():
    """bench/sources.py: every layout read and scored whole (it asserts no row has an error)."""
    out = _run(os.path.join(BENCH, "sources.py"), "--smoke")
    for layout in ("folder", "img2dataset parquet", "hugging face parquet"):
        assert out.count(layout) == 2, out
    assert out.count("x tars") == 16, out


def test_semdedup_bench_runs_as_a_gpu_check_step(tmp_path):
    """bench/semdedup.py at tiny sizes, through its step of the prepared GPU run (DRY_RUN=1, on the
    CPU): both sides find the same planted copies and the ratio is printed."""
    env = dict(os.environ, DRY_RUN="1", PYTHON=sys.executable, OUT=str(tmp_path / "out"),
               GPU_CHECK_WORK=str(tmp_path / "work"), GPU_CHECK_STEPS="dedup", GPU_CHECK_BUDGET="300")
    repo = os.path.join(os.path.dirname(__file__), "..")
    out = subprocess.run(["bash", os.path.join(BENCH, "gpu-check.sh")], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=360)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "ok       dedup" in summary, summary
    found = {line.split()[2]: line for line in summary.splitlines()
             if line.strip().startswith(("run 1 reference (", "run 1 workflow  ("))}
    assert "40 duplicates" in found["reference"] and "40 duplicates" in found["workflow"], summary
    assert "workflow speed / reference speed, best of 1 each:" in summary, summary
