#!/usr/bin/env bash
# The one prepared GPU check (issue 5), for a CUDA machine that has PyTorch but no network, Ray or MLflow
# (the lent H200: python3 with torch, torchvision, scikit-learn, numpy, pytest; /work/.library/device).
#
#   here, once:   bash benchmarks/gpu_check.sh --prepare   (copies ../shared/data/MNIST to .gpu-data/, git-ignored)
#   there:        device run, carry [".gpu-data"], timeout_s ~540:   bash benchmarks/gpu_check.sh
#
#   1. the GPU-only tests (tests/test_gpu.py: a vmap-stacked pack on CUDA equals its networks alone)
#   2. benchmarks/grid_throughput.py on CUDA: the plain loop (timed on one seed, rated per network) vs the
#      packed sweep's packs trained by imbalance_core (`core`), and the projected full MNIST grid.
#      Ray + MLflow add per pack a trial start and ~25 ms of driver logging per network, measured on CPU
#      (benchmarks/results/grid_throughput_cpu.txt); they are not installed there.
# Logs go to $OUT (or ./gpu-check) so they come back.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ "${1:-}" = "--prepare" ]; then
    mkdir -p .gpu-data && cp -r ../shared/data/MNIST .gpu-data/
    grep -qx '/.gpu-data/' .git/info/exclude 2>/dev/null || echo '/.gpu-data/' >> .git/info/exclude
    du -sh .gpu-data; exit 0
fi
out="${OUT:-gpu-check}"; mkdir -p "$out"
py="$(command -v python3)"; [ -x .venv/bin/python ] && py=.venv/bin/python
export PYTHONUNBUFFERED=1 IMBALANCE_SHARED_DATA="$root/.gpu-data"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
"$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee "$out/env.txt"
timeout 150 "$py" -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$out/gpu-tests.log" | tail -5
timeout 330 "$py" benchmarks/grid_throughput.py --device cuda --data-dir .gpu-data --iterations 1000 \
    --repetitions 8 --ways plain core --plain-seeds 1 2>&1 | tee "$out/grid_throughput_cuda.log" | tail -9
