#!/usr/bin/env bash
# A/B of one driver environment setting on a rehearsal slice, alternated over rounds (these machines are noisy):
#   bash benchmarks/tune_env_ab.sh VAR VALUE_A VALUE_B [ROUNDS]
# e.g. VAR=TUNE_MAX_PENDING_TRIALS_PG 1 200 (benchmarks/results/tune_pending_trials.txt) or
#      VAR=TUNE_DISABLE_AUTO_CALLBACK_LOGGERS 0 1 (tune_loggers_cpu.txt).
# Slice: the mnist preset at 2 repetitions (920 networks, 180 trials), --rehearse --log-processes 2. Prints per run
# the total wall, the driver's own cost line and the Ray workers that ran trials.
set -euo pipefail
cd "$(dirname "$0")/.."
var=$1; a=$2; b=$3; rounds=${4:-2}
for round in $(seq 1 "$rounds"); do
  for v in "$a" "$b"; do
    d=$(mktemp -d /tmp/tune-env-ab-XXXX)
    s=$(date +%s.%N)
    env "$var=$v" RAY_TMPDIR="$d" .venv/bin/python sweeps/full_grid.py --preset mnist --data-dir ../shared/data \
      --repetitions 2 --rehearse --log-processes 2 --name ab --tracking-uri "sqlite:///$d/mlflow.db" \
      --storage-path "$d/ray" > "$d/log" 2>&1
    e=$(date +%s.%N)
    # the Ray worker processes that ran trials: the pid in each trial's results (Tune's own field)
    workers=$(cat "$d"/ray/ab-rehearsal/*/result.json | python3 -c "import sys, json; print(len({json.loads(l)['pid'] for l in sys.stdin if l.strip()}))")
    echo "round $round $var=$v: total $(python3 -c "print(f'{$e - $s:.1f}')") s; $(grep 'rehearsal driver' "$d/log" | tail -1 | sed 's/.*rehearsal driver: //'); Ray workers that ran trials $workers"
    rm -rf "$d"
  done
done
