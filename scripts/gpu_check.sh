#!/usr/bin/env bash
# One-call GPU check (see scripts/gpu_check.py): the Fashion-MNIST study at 224 px in bf16-mixed on
# a subset, the TopK SAE and extraction benchmarks on CUDA, a DDP smoke run with 2+ GPUs.
#   bash scripts/gpu_check.sh OUT_DIR [--cpu-smoke] [--budget-s 480] [--data-dir DIR]
# Writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md. Exit 2 at once when there is no CUDA GPU
# (unless --cpu-smoke), 1 when a step failed or ran out of time, 0 when all passed.
set -euo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: bash scripts/gpu_check.sh OUT_DIR [--cpu-smoke] [--budget-s S] [--data-dir DIR]" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
