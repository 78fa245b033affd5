#!/usr/bin/env bash
# One command for every GPU figure (issue 15.4): writes ONE JSON, at most 8 minutes on one GPU
# (--dataset JSON adds LUMIR-style sets to the predict section; an H200 took 3.3 min with 6 extra pairs).
#   bash bench/gpu_check.sh                 # full: CUDA, 160x224x192 -> bench/out/gpu_check_<stamp>.json
#   bash bench/gpu_check.sh --smoke         # CPU, tiny sizes, < 60 s (what the slow test runs)
#   CAIO_GPU_CHECK_OUT=/tmp/x.json bash bench/gpu_check.sh
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh --smoke   # another interpreter than `python` on PATH
set -euo pipefail
cd "$(dirname "$0")/.."
args=("$@")
if [[ -n "${CAIO_GPU_CHECK_OUT:-}" ]]; then args+=(--out "$CAIO_GPU_CHECK_OUT"); fi
exec timeout --signal=TERM --kill-after=10 480 "${PYTHON:-python}" -m bench.gpu_check "${args[@]}"
