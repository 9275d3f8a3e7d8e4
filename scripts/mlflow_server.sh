#!/usr/bin/env bash
# Start, stop or restart the MLflow tracking server, recording MLflow's own PID.
#
#   MLFLOW_BACKEND_URI=postgresql://mlflow@127.0.0.1:5432/mlflow MLFLOW_ARTIFACTS=/shared/mlflow/artifacts \
#   MLFLOW_HOST=10.0.0.5 MLFLOW_PORT=5000 bash scripts/mlflow_server.sh start|stop|restart|status
#
# The server runs in its own session (setsid), and the process that becomes `mlflow server` writes
# its own PID to $MLFLOW_PIDFILE (default ~/mlflow.pid) before it execs: that PID is also the process
# group of MLflow's workers. `stop` ends the whole group (SIGTERM, SIGKILL after 20 s) and waits until
# it is gone, so a restart never leaves an old server on the port. `start` waits until /health
# answers (up to $MLFLOW_START_TIMEOUT s, default 180) and fails with the log's tail otherwise.
# Other settings: MLFLOW_LOG (default ~/mlflow.log), MLFLOW_BIN (default: this repository's
# .venv/bin/mlflow), MLFLOW_WORKERS (default: MLflow's). A PostgreSQL password comes from ~/.pgpass
# (scripts/mlflow_db.sh writes it), never from the URI.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pidfile="${MLFLOW_PIDFILE:-$HOME/mlflow.pid}"
log="${MLFLOW_LOG:-$HOME/mlflow.log}"
bin="${MLFLOW_BIN:-$root/.venv/bin/mlflow}"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"

alive() {  # any process left in the server's process group
  [ -f "$pidfile" ] && kill -0 -- "-$(cat "$pidfile")" 2>/dev/null
}

stop() {
  if ! [ -f "$pidfile" ]; then
    return 0
  fi
  local pgid
  pgid="$(cat "$pidfile")"
  if alive; then
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 40); do alive || break; sleep 0.5; done
    if alive; then
      echo "[mlflow_server] process group $pgid still there after 20 s: SIGKILL" >&2
      kill -KILL -- "-$pgid" 2>/dev/null || true
      for _ in $(seq 20); do alive || break; sleep 0.5; done
    fi
    alive && { echo "[mlflow_server] could not stop process group $pgid" >&2; exit 1; }
    echo "[mlflow_server] stopped (pid $pgid)"
  fi
  rm -f "$pidfile"
}

healthy() {
  "$(dirname "$bin")/python" - "http://$host:$port/health" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 and r.read().strip() == b"OK" else 1)
PY
}

start() {
  : "${MLFLOW_BACKEND_URI:?set MLFLOW_BACKEND_URI (e.g. postgresql://mlflow@127.0.0.1:5432/mlflow)}"
  : "${MLFLOW_ARTIFACTS:?set MLFLOW_ARTIFACTS (a folder every user of the server can reach)}"
  if alive; then
    echo "[mlflow_server] already running (pid $(cat "$pidfile")); use restart" >&2
    exit 1
  fi
  if healthy; then
    echo "[mlflow_server] something not started by this script answers on $host:$port; stop it first" >&2
    exit 1
  fi
  mkdir -p "$MLFLOW_ARTIFACTS" "$(dirname "$pidfile")"
  local workers=()
  [ -n "${MLFLOW_WORKERS:-}" ] && workers=(--workers "$MLFLOW_WORKERS")
  # setsid: a new session and process group whose id is the PID written below (bash's $$, which
  # then execs mlflow, so the PID file holds MLflow's own PID, not a shell's).
  PIDFILE="$pidfile" setsid bash -c 'echo $$ > "$PIDFILE"; exec "$@"' mlflow-server \
    "$bin" server --backend-store-uri "$MLFLOW_BACKEND_URI" --artifacts-destination "$MLFLOW_ARTIFACTS" \
    --host "$host" --port "$port" "${workers[@]}" < /dev/null >> "$log" 2>&1 &
  local t0=$SECONDS
  for _ in $(seq 20); do [ -s "$pidfile" ] && break; sleep 0.1; done
  while ! healthy; do
    if ! alive; then
      echo "[mlflow_server] mlflow server exited; the end of $log:" >&2
      tail -n 30 "$log" >&2
      rm -f "$pidfile"
      exit 1
    fi
    if (( SECONDS - t0 > ${MLFLOW_START_TIMEOUT:-180} )); then
      echo "[mlflow_server] no answer on http://$host:$port/health after ${MLFLOW_START_TIMEOUT:-180} s; see $log" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "[mlflow_server] http://$host:$port up (pid $(cat "$pidfile"), $((SECONDS - t0)) s); log $log"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if alive; then echo "running (pid $(cat "$pidfile"))"; else echo "not running"; exit 3; fi ;;
  *) echo "usage: bash scripts/mlflow_server.sh start|stop|restart|status" >&2; exit 2 ;;
esac
