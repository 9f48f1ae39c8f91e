#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): CUDA tests, fp16 training with a resume, 512x512x300
# CT inference with and without flips, a forced out-of-memory fallback, torchrun against the
# plain command. Under 8 minutes on one GPU; needs only the project's install. One JSON out:
#   benchmarks/gpu_check.sh [--out gpu_check.json] [--steps infer_ct,forced_fallback] ...
# Exit 0: every step passed; 1: a step failed (see the JSON); 2: no CUDA GPU visible.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
exec "$PY" -m benchmarks.gpu_check "$@"
