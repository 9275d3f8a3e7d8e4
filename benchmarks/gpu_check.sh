#!/usr/bin/env bash
# The one prepared GPU check (issues 5 and 26), for a CUDA machine that has PyTorch but no network, Ray or
# MLflow (the lent H200: python3 with torch, numpy, scikit-learn, pytest; /work/.library/device).
#
#   here, once:   bash benchmarks/gpu_check.sh --prepare      (MNIST -> .gpu-data/, git-ignored)
#   there:        device run, carry [".gpu-data"], timeout_s 600:   bash benchmarks/gpu_check.sh
#   here, CI:     bash benchmarks/gpu_check.sh --cpu           (the dry run; tests/test_gpu_check.py)
#
# What it measures is benchmarks/gpu_check.py's docstring; the results are ONE file, $OUT/gpu_check.json
# (rewritten after every section, so a run cut off still returns what it measured). Beside it:
# gpu_check.log (its output), nvidia-smi.txt, and gpu-tests.log when time was left for tests/test_gpu.py.
# Total: at most GPU_CHECK_TOTAL_S (590 s): gpu_check.py's budget (GPU_CHECK_BUDGET_S, default total - 70 s),
# then tests/test_gpu.py only with >= 75 s left. A shorter run, leaving device time for a rerun:
#   GPU_CHECK_TOTAL_S=300 bash benchmarks/gpu_check.sh     (the sections shrink or skip to fit)
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py="$(command -v python3)"; [ -x .venv/bin/python ] && py=.venv/bin/python
export PYTHONUNBUFFERED=1
if [ "${1:-}" = "--prepare" ]; then
    exec "$py" benchmarks/gpu_check.py --prepare
fi
out="${OUT:-gpu-check}"; mkdir -p "$out"
if [ "${1:-}" = "--cpu" ]; then
    exec "$py" benchmarks/gpu_check.py --cpu --out "$out/gpu_check.json"
fi
start=$SECONDS
total=${GPU_CHECK_TOTAL_S:-590}
budget=${GPU_CHECK_BUDGET_S:-$(( total - 70 ))}
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
timeout "$(( budget + 40 ))" "$py" benchmarks/gpu_check.py --out "$out/gpu_check.json" --budget-s "$budget" \
    2>&1 | tee "$out/gpu_check.log"
rc=${PIPESTATUS[0]}
left=$(( total - (SECONDS - start) ))
if [ "$left" -ge 75 ]; then
    export IMBALANCE_SHARED_DATA="$root/.gpu-data"
    timeout "$(( left - 5 ))" "$py" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py \
        > "$out/gpu-tests.log" 2>&1
    tail -3 "$out/gpu-tests.log"
else
    echo "tests/test_gpu.py: not run ($left s left)" | tee "$out/gpu-tests.log"
fi
exit "$rc"
