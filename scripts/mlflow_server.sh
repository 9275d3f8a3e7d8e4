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
#
# Who may talk to it (both optional; cluster.yaml sets both on the head):
#   MLFLOW_ALLOWED_CIDRS=172.31.0.0/16   Host headers admitted: addresses of these ranges at this port, and
#                                        localhost (`python -m sweeps.cluster allowed-hosts`); MLflow's
#                                        default admits every private range and names like 10.x.example.
#   MLFLOW_AUTH_CREDENTIALS=~/.mlflow/credentials
#                                        MLflow's basic-auth app: the admin login is read from this file,
#                                        MLflow's own client format ([mlflow] mlflow_tracking_username /
#                                        mlflow_tracking_password), made here (mode 600) if missing. MLflow's
#                                        clients on this machine (the sweep's driver, report.py) read it
#                                        themselves; users elsewhere set MLFLOW_TRACKING_USERNAME/PASSWORD.
#                                        Its user store (basic_auth.db) and CSRF key sit next to the file;
#                                        /health stays open. Needs MLflow's `auth` extra (Flask-WTF).
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

credentials() {  # make the login file if missing; print the password (to a variable, never to a terminal)
  local f="$1"
  if ! [ -s "$f" ]; then
    ( umask 077; mkdir -p "$(dirname "$f")"
      printf '[mlflow]\nmlflow_tracking_username = admin\nmlflow_tracking_password = %s\n' \
        "$(od -An -tx1 -N18 /dev/urandom | tr -d ' \n')" > "$f" )
    echo "[mlflow_server] made the MLflow login in $f (mode 600)" >&2
  fi
  chmod 600 "$f"
  sed -n 's/^mlflow_tracking_password *= *//p' "$f" | head -n1
}

start() {
  : "${MLFLOW_BACKEND_URI:?set MLFLOW_BACKEND_URI (e.g. postgresql://mlflow@127.0.0.1:5432/mlflow)}"
  : "${MLFLOW_ARTIFACTS:?set MLFLOW_ARTIFACTS (a folder every user of the server can reach)}"
  local extra=()
  if [ -n "${MLFLOW_ALLOWED_CIDRS:-}" ]; then
    local hosts
    hosts="$(cd "$root" && "$(dirname "$bin")/python" -m sweeps.cluster allowed-hosts "$MLFLOW_ALLOWED_CIDRS" \
             --port "$port")" || { echo "[mlflow_server] MLFLOW_ALLOWED_CIDRS=$MLFLOW_ALLOWED_CIDRS refused" >&2; exit 2; }
    extra+=(--allowed-hosts "$hosts")
  fi
  if [ -n "${MLFLOW_AUTH_CREDENTIALS:-}" ]; then
    local creds user pw ini
    creds="$MLFLOW_AUTH_CREDENTIALS"
    pw="$(credentials "$creds")"
    user="$(sed -n 's/^mlflow_tracking_username *= *//p' "$creds" | head -n1)"
    [ -n "$user" ] && [ -n "$pw" ] || { echo "[mlflow_server] $creds holds no username/password" >&2; exit 2; }
    ini="$(dirname "$creds")/basic_auth.ini"
    ( umask 077; printf '[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:///%s\nadmin_username = %s\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n' \
        "$(dirname "$creds")/basic_auth.db" "$user" > "$ini" )
    # the admin password reaches MLflow through its environment (readable by this user only), never an
    # argument; MLflow uses it when it creates the admin in a new user store (basic_auth.db)
    # and the key that signs its CSRF tokens (kept next to the login; one per server)
    local key="$(dirname "$creds")/flask_secret_key"
    [ -s "$key" ] || ( umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$key" )
    export MLFLOW_AUTH_CONFIG_PATH="$ini" MLFLOW_AUTH_ADMIN_PASSWORD="$pw" MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$key")"
    extra+=(--app-name basic-auth)
  fi
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
    --host "$host" --port "$port" "${workers[@]}" "${extra[@]}" < /dev/null >> "$log" 2>&1 &
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
  echo "[mlflow_server] http://$host:$port up (pid $(cat "$pidfile"), $((SECONDS - t0)) s)" \
       "${MLFLOW_AUTH_CREDENTIALS:+with basic auth (login in $MLFLOW_AUTH_CREDENTIALS)}; log $log"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if alive; then echo "running (pid $(cat "$pidfile"))"; else echo "not running"; exit 3; fi ;;
  *) echo "usage: bash scripts/mlflow_server.sh start|stop|restart|status" >&2; exit 2 ;;
esac
