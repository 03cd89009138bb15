"""nemo_aesthetic on a GPU machine (one NVIDIA GPU, no network) in ONE command: ``bash bench/gpu-check.sh``.

Run from the repository root. Wheels (and the aesthetic weights, under ``shared/models/``) are taken
from ``bench/`` if it holds wheels, else from ``<repo>/.whl`` (BENCHMARKS.md "GPU" lists them). Each
step is time-boxed (never past the overall deadline), never fatal, and logged; the summary is
printed last and written to ``$OUT/summary.txt``. ``nvidia-smi dmon`` samples the GPU every 2 s.

Steps (:data:`STEPS`; add a bench with one line there):
  install   pip install --no-index --target $GPU_CHECK_SITE the carried wheels
  env       nvidia-smi, package versions, ``import nemo_aesthetic, dask.distributed, webdataset``
  tests     pytest -m gpu on the test modules that use the mark
  fidelity  bench/gpu_fidelity.py: GPU path vs CPU path on real photos (model input mean |diff|,
            embedding cosine) and the model's precision modes against fp32
  bench     bench/gpu_throughput.py: model-only and end-to-end images/s, GPU busy %, score fidelity
            (20 % progressive JPEGs: the middle of the web's 15-25 %, left to the PIL pool)
  host      bench/host_side.py: the host side's per-image costs on this host's CPU (prep, structure
            check, the PIL pool's progressive JPEGs and its threads, tar parsing old vs now)
  dedup     bench/semdedup.py: semantic dedup (k-means + pairwise on the GPU worker) vs a torch reference
  photo     bench/photo_bench.py: the pipeline piece by piece on real photos at web sizes

Environment knobs: GPU_CHECK_BUDGET (seconds for everything, default 450), GPU_CHECK_STEPS (default
all but install, which runs when wheels are found), BENCH_ARGS, PHOTO_ARGS, FIDELITY_ARGS, DEDUP_ARGS, OUT
(results folder, default /tmp/gpu-check-out), DRY_RUN=1 (a CPU rehearsal: tiny model, small sizes).
"""
from __future__ import annotations

import glob
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path.cwd()
HERE = Path(__file__).resolve().parent
PY = os.environ.get("PYTHON", sys.executable)
DRY = os.environ.get("DRY_RUN", "0") == "1"
START = time.time()
BUDGET = float(os.environ.get("GPU_CHECK_BUDGET", 450))
DEADLINE = START + BUDGET
OUT = Path(os.environ.get("OUT") or "/tmp/gpu-check-out")
WORK = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/gpu-check"))
SITE = os.environ.get("GPU_CHECK_SITE", "/tmp/site")
SUMMARY = OUT / "summary.txt"
WEIGHTS = "models/sac+logos+ava1-l14-linearMSE.pth"


def args(name: str, dry: str, real: str) -> list[str]:
    """The step's arguments: ``$NAME`` if set, else the dry-run or the real defaults."""
    return shlex.split(os.environ.get(name) or (dry if DRY else real))


def gpu_test_modules() -> list[str]:
    """The test modules that use the ``gpu`` mark (collecting the whole folder would need the CPU
    suite's data files, which do not travel)."""
    found = [p for p in sorted(glob.glob("tests/test_*.py")) if "mark.gpu" in Path(p).read_text()]
    return found or ["tests/test_gpu.py"]


def tests_cmd() -> list[str]:
    timeout = ["--timeout=120"] if subprocess.run([PY, "-c", "import pytest_timeout"],
                                                    capture_output=True).returncode == 0 else []
    return [PY, "-m", "pytest", "-m", "gpu", *gpu_test_modules(), "-q", "-rA", "-p", "no:cacheprovider", *timeout]


def photo_cmd() -> list[str]:
    dry = "--device cpu --tiny --photos 96 --per-shard 48 --batch 16 " if DRY else ""
    return [PY, "bench/photo_bench.py", "--deadline", str(DEADLINE - 12), "--jsonl", str(OUT / "photo.jsonl"),
            "--workdir", str(WORK / "photo"), *shlex.split(dry + os.environ.get("PHOTO_ARGS", ""))]


#: (name, seconds at most, log file, command (a function: built when the step starts), summary lines:
#: the log lines that start with one of these go to the summary). Add a step with one line here.
STEPS = [
    ("env", 90, "env.log", lambda: [PY, "bench/gpu_env.py"],
     ("torch ", "torchvision ", "dask_cuda ", "cupy ", "cudf ", "torch.cuda", "NVIDIA", "import nemo")),
    ("tests", 150, "pytest.log", tests_cmd, ("PASSED", "FAILED", "ERROR", "SKIPPED", *"0123456789")),
    ("fidelity", 90, "fidelity.log",
     lambda: [PY, "bench/gpu_fidelity.py", *args("FIDELITY_ARGS", "--tiny --device cpu --photos 8", "--photos 64")],
     ("fidelity", "precision")),
    ("bench", 240, "bench.log",
     lambda: [PY, "bench/gpu_throughput.py", *args(
         "BENCH_ARGS", "--tiny --device cpu --batch 8 --threads 1 --shards 2 --images-per-shard 16 --seconds 0.5 "
         "--matmul 256", "--batch 256 --threads 8 --shards 8 --images-per-shard 1000 --seconds 5 --progressive 0.2")],
     ("device", "data", "matmul", "model only", "end to end", "fidelity")),
    ("host", 90, "host.log", lambda: [PY, "bench/host_side.py", *args("HOST_ARGS", "--images 16 --repeat 1",
                                                                      "--images 64 --repeat 2")],
     ("cpus", "prep", "one refused", "JPEG", "PIL", "progressive", "tar")),
    ("dedup", 120, "dedup.log", lambda: [PY, "bench/semdedup.py", *args(
        "DEDUP_ARGS", "--rows 4000 --dim 64 --clusters 8 --iters 2 --rows-per-part 2000 --repeats 1",
        "--rows 100000 --clusters 100 --iters 5 --repeats 3")], ("data", "run", "workflow")),
    ("photo", 400, "photo.log", photo_cmd, ("[",)),
]


def note(line: str) -> None:
    print(line, flush=True)
    with SUMMARY.open("a") as f:
        f.write(line + "\n")


def left() -> float:
    return DEADLINE - time.time()


def run_step(name: str, limit: float, log: Path, cmd: list[str], env: dict) -> None:
    """Run ``cmd`` time-boxed (never past the deadline), never fatal; note its verdict."""
    limit = min(limit, left() - 10)
    if limit < 15:
        note(f"SKIP     {name}: {left():.0f}s left")
        return
    started = time.time()
    with log.open("a") as out:
        out.write(f"=== {name}: {shlex.join(cmd)} (limit {limit:.0f}s, {time.strftime('%H:%M:%S', time.gmtime())} UTC)"
                  " ===\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
            verdict = "ok" if rc == 0 else f"FAIL({rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
            verdict = "TIMEOUT"
    note(f"{verdict:8s} {name:10s} {time.time() - started:4.0f}s  {log.name}")


def summarise(log: Path, prefixes: tuple) -> None:
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            if line.lstrip().startswith(prefixes):
                note("    " + line.strip()[:170])


def environment() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               HF_HUB_OFFLINE="1", NEMO_AESTHETIC_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1", DASK_DISTRIBUTED__DIAGNOSTICS__NVML="True")
    wheel_dir = HERE if glob.glob(str(HERE / "*.whl")) else REPO / ".whl"
    wheels = sorted(glob.glob(str(wheel_dir / "*.whl")))
    path = [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    if wheels:
        run_step("install", 120, OUT / "env.log", [PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                                   "--no-compile", "--no-cache-dir", "--upgrade", "--target", SITE,
                                                   *wheels], env)
        path.insert(0, SITE)
    else:
        note(f"WARNING: no wheels in {wheel_dir}: dask/distributed/webdataset must already be importable")
    env["PYTHONPATH"] = os.pathsep.join(path)
    for shared in (wheel_dir / "shared", Path(env.get("NEMO_AESTHETIC_SHARED", "/nonexistent")), REPO.parent / "shared"):
        if (shared / WEIGHTS).is_file():
            env["NEMO_AESTHETIC_SHARED"] = str(shared)
            break
    else:
        note(f"WARNING: aesthetic weights not found ({wheel_dir}/shared/{WEIGHTS}): the GPU tests will error")
    return env


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text("")
    wanted = os.environ.get("GPU_CHECK_STEPS", ",".join(name for name, *_ in STEPS)).split(",")
    if not (REPO / "nemo_aesthetic").is_dir():
        note(f"WARNING: {REPO} does not look like the repository root (no nemo_aesthetic/)")
    note(f"gpu-check {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}  budget {BUDGET:.0f}s  steps "
         f"{' '.join(wanted)}  dry_run={int(DRY)}  repo {REPO}")
    env = environment()
    dmon = None
    if subprocess.run(["which", "nvidia-smi"], capture_output=True).returncode == 0:
        with (OUT / "env.log").open("a") as log:
            subprocess.run(["nvidia-smi"], stdout=log, stderr=subprocess.STDOUT, timeout=20)
        dmon = subprocess.Popen(["timeout", str(int(BUDGET + 30)), "nvidia-smi", "dmon", "-s", "pucm", "-d", "2",
                                 "-o", "T"], stdout=(OUT / "dmon.log").open("w"), stderr=subprocess.STDOUT)
    try:
        for name, limit, log, command, prefixes in STEPS:
            if name in wanted:
                run_step(name, limit, OUT / log, command(), env)
                summarise(OUT / log, prefixes)
    finally:
        if dmon is not None:
            dmon.terminate()
            dmon.wait()
    dmon_summary(OUT / "dmon.log")
    note(f"total {time.time() - START:.0f}s of {BUDGET:.0f}s; files in {OUT}: "
         + " ".join(sorted(p.name for p in OUT.iterdir())))
    print("\n================================ SUMMARY ================================")
    print(SUMMARY.read_text())
    return 0


def dmon_summary(path: Path) -> None:
    if not path.exists():
        return
    utils = [float(line.split()[4]) for line in path.read_text().splitlines()
             if not line.startswith("#") and len(line.split()) > 5 and line.split()[4].replace(".", "").isdigit()]
    if utils:
        note(f"    dmon: {len(utils)} samples, mean SM util {sum(utils) / len(utils):.0f}%, "
             f"{sum(u > 0 for u in utils)} samples with SM util > 0")


if __name__ == "__main__":
    sys.exit(main())
