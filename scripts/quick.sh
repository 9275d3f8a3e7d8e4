#!/usr/bin/env bash
# The README's main job: set up (idempotent), run the `quick` preset locally on the bundled MNIST digits
# (local Ray, MLflow in ./mlflow.db), print the results table, write the report, say how to open the UI.
# Extra arguments go to sweeps/full_grid.py (e.g. --iterations 100).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
name="quick-$(date +%Y%m%d-%H%M%S)"
uri="sqlite:///$root/mlflow.db"
.venv/bin/python sweeps/full_grid.py --preset quick --name "$name" --tracking-uri "$uri" \
    --storage-path "$root/runs/ray" "$@"
.venv/bin/python sweeps/report.py --tracking-uri "$uri" --name "$name" --out "$root/reports/$name"
echo
echo "report: reports/$name/results.md (figures beside it)"
echo "MLflow UI: .venv/bin/mlflow ui --backend-store-uri $uri --host 127.0.0.1 --port 5000"
echo "           then open http://127.0.0.1:5000 and the experiment '$name'"
