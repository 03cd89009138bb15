#!/usr/bin/env bash
# gpu-check.sh - nemo_aesthetic on a GPU machine (one NVIDIA GPU, no network) in ONE command:
#
#   bash bench/gpu-check.sh       # from the repository root; BENCHMARKS.md "GPU" says how to prepare .whl/
#
# It runs bench/gpu_check.py, whose docstring lists the steps (env, tests, fidelity, bench, host,
# photo), the knobs (GPU_CHECK_BUDGET, GPU_CHECK_STEPS, BENCH_ARGS, PHOTO_ARGS, FIDELITY_ARGS, OUT,
# DRY_RUN=1 for a CPU rehearsal) and the files it leaves in $OUT (summary.txt printed last).
exec "${PYTHON:-python3}" "$(dirname "${BASH_SOURCE[0]}")/gpu_check.py" "$@"
