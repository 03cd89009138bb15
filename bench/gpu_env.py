"""Versions and devices of the GPU machine (the `env` step of bench/gpu_check.py)."""
import importlib
import os
import platform
import shutil
import subprocess
import sys

print(sys.version.replace("\n", " "), "|", sys.executable, "|", platform.platform())
print("PYTHONPATH", os.environ.get("PYTHONPATH"))
for name in ["torch", "torchvision", "timm", "numpy", "pandas", "pyarrow", "fsspec", "PIL", "dask", "distributed",
             "dask_cuda", "webdataset", "tornado", "zict", "partd", "locket", "tblib", "braceexpand", "cloudpickle",
             "msgpack", "toolz", "cuda.core", "pynvml", "cupy", "cudf", "skimage", "pytest", "pytest_timeout"]:
    try:
        mod = importlib.import_module(name)
        print(f"  {name:14s} {str(getattr(mod, '__version__', '?')):24s} {getattr(mod, '__file__', '')}")
    except Exception as exc:
        print(f"  {name:14s} MISSING  {type(exc).__name__}: {exc}")
import torch

print("torch.cuda.is_available()", torch.cuda.is_available(), "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version(), "| threads", torch.get_num_threads(), "| cpus", os.cpu_count())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))
import nemo_aesthetic, dask.distributed, webdataset  # noqa: E401,F401  (the brief's import check)

print("import nemo_aesthetic, dask.distributed, webdataset: ok")
print("cpus", os.cpu_count(), "| /tmp free GiB", round(shutil.disk_usage("/tmp").free / 2**30, 1))
if shutil.which("nvidia-smi"):
    subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit,"
                    "temperature.gpu", "--format=csv"], timeout=20)
