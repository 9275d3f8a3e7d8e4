#!/usr/bin/env bash
# The one prepared GPU check (issue 5): run on a CUDA machine from the repository root, e.g. through the
# device tool with a timeout of ~540 s. Needs ../shared/data (MNIST) beside the repository.
#   1. the GPU-only tests (vmap-stacked pack on CUDA equals the networks alone)
#   2. benchmarks/grid_throughput.py on CUDA: plain loop vs sweep vs packed sweep, and the projection
# Writes its logs to $OUT (or ./gpu-check) so they come back.
set -uo pipefail
out="${OUT:-gpu-check}"; mkdir -p "$out"
bash scripts/setup.sh > "$out/setup.log" 2>&1 || { tail -20 "$out/setup.log"; exit 1; }
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
timeout 120 .venv/bin/python -m pytest -q -m gpu tests 2>&1 | tee "$out/gpu-tests.log" | tail -5
timeout 420 .venv/bin/python benchmarks/grid_throughput.py --device cuda --iterations 1000 --repetitions 2 \
    2>&1 | tee "$out/grid_throughput_cuda.log" | tail -12
