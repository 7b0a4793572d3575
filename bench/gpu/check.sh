#!/usr/bin/env bash
# The GPU device check (issue 17), for a machine with an NVIDIA GPU and PyTorch,
# with a paddock binary built elsewhere and carried over (target/release/paddock):
#   PYTHON=/path/to/python-with-torch bash bench/gpu/check.sh
# What it checks, and its PASS/FAIL criteria, are in check.py. The report goes to
# stdout and to $OUT/gpu-check.txt (/tmp/gpu-check.txt without $OUT); the exit
# status is 1 if any part failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUTFILE=${OUT:-/tmp}/gpu-check.txt
exec > >(tee "$OUTFILE") 2>&1
PY=${PYTHON:-python3}
command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: not a GPU machine"; exit 1; }
"$PY" -c 'import torch; assert torch.cuda.is_available(), "torch.cuda.is_available() is False"' \
  || { echo "PyTorch with CUDA is needed ($PY)"; exit 1; }
echo "gpu check: $(date -u +%FT%TZ) on $(hostname), $(nproc) cores"
PYTHON="$PY" "$PY" bench/gpu/check.py
