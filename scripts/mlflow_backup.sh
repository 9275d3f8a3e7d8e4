#!/usr/bin/env bash
# MLflow's PostgreSQL database, dumped to the shared volume, so that a new head brings the runs back
# (scripts/mlflow_db.sh --restore-from restores the newest dump into a new, empty database).
#
#   MLFLOW_BACKUP_DIR=/shared/mlflow/backup bash scripts/mlflow_backup.sh start|stop|restart|status|now
#
# `start` runs a loop in its own session that dumps every $MLFLOW_BACKUP_INTERVAL_S seconds (default 300)
# when the database changed since the last dump (rows inserted, updated or deleted: pg_stat_database), and
# `now` dumps once, at once (before `ray down`). A dump is PostgreSQL's custom format (`pg_dump -Fc`),
# written to mlflow.dump.tmp, then renamed to mlflow.dump (the previous one kept as mlflow.dump.1), so a
# head lost mid-dump leaves the last complete one. The connection is the role's own
# (postgresql://$MLFLOW_DB_ROLE@$MLFLOW_DB_HOST:$MLFLOW_DB_PORT/$MLFLOW_DB_NAME, password from ~/.pgpass):
# no superuser. Each dump's size and time go to $MLFLOW_BACKUP_LOG (default ~/mlflow-backup.log).
# What a dump misses (runs logged after it) a resumed sweep logs again from Tune's state on /shared
# without training (`full_grid.py --resume`).
set -euo pipefail
dir="${MLFLOW_BACKUP_DIR:?set MLFLOW_BACKUP_DIR (a folder on the shared volume, e.g. /shared/mlflow/backup)}"
interval="${MLFLOW_BACKUP_INTERVAL_S:-300}"
role="${MLFLOW_DB_ROLE:-mlflow}"
db="${MLFLOW_DB_NAME:-mlflow}"
host="${MLFLOW_DB_HOST:-127.0.0.1}"
port="${MLFLOW_DB_PORT:-5432}"
pidfile="${MLFLOW_BACKUP_PIDFILE:-$HOME/mlflow-backup.pid}"
log="${MLFLOW_BACKUP_LOG:-$HOME/mlflow-backup.log}"
state="${pidfile%.pid}.changes"
conn=(-h "$host" -p "$port" -U "$role" -d "$db")

changes() {  # rows written to the database since its statistics began
  psql "${conn[@]}" -tAq -c "SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database
                              WHERE datname = current_database()"
}

dump() {
  mkdir -p "$dir"
  local t0 size
  t0=$(date +%s%3N)
  pg_dump "${conn[@]}" -Fc -f "$dir/mlflow.dump.tmp"
  [ -f "$dir/mlflow.dump" ] && mv -f "$dir/mlflow.dump" "$dir/mlflow.dump.1"
  mv -f "$dir/mlflow.dump.tmp" "$dir/mlflow.dump"
  size=$(stat -c %s "$dir/mlflow.dump")
  local ms=$(( $(date +%s%3N) - t0 ))
  echo "$(date '+%F %T') dumped $db to $dir/mlflow.dump: $size bytes in $((ms / 1000)).$(printf %03d $((ms % 1000))) s" \
    | tee -a "$log"
}

loop() {
  local last="" now
  while true; do
    now="$(changes 2>/dev/null || echo "")"
    if [ -n "$now" ] && [ "$now" != "$last" ]; then
      if dump >/dev/null 2>>"$log"; then last="$now"; echo "$now" > "$state"; fi
    fi
    sleep "$interval"
  done
}

alive() { [ -f "$pidfile" ] && kill -0 -- "-$(cat "$pidfile")" 2>/dev/null; }

stop() {
  if alive; then
    kill -TERM -- "-$(cat "$pidfile")" 2>/dev/null || true
    for _ in $(seq 20); do alive || break; sleep 0.25; done
    alive && kill -KILL -- "-$(cat "$pidfile")" 2>/dev/null || true
    echo "[mlflow_backup] stopped (pid $(cat "$pidfile"))"
  fi
  rm -f "$pidfile"
}

start() {
  if alive; then echo "[mlflow_backup] already running (pid $(cat "$pidfile")); use restart" >&2; exit 1; fi
  psql "${conn[@]}" -tAq -c "SELECT 1" >/dev/null || { echo "[mlflow_backup] cannot connect to $db" >&2; exit 1; }
  mkdir -p "$dir" "$(dirname "$pidfile")"
  # its own session and process group (the PID written is the group's), as scripts/mlflow_server.sh
  PIDFILE="$pidfile" setsid bash -c 'echo $$ > "$PIDFILE"; exec "$@"' mlflow-backup \
    bash "${BASH_SOURCE[0]}" loop < /dev/null >> "$log" 2>&1 &
  for _ in $(seq 20); do [ -s "$pidfile" ] && break; sleep 0.1; done
  echo "[mlflow_backup] dumping $db to $dir every ${interval} s when it changed (pid $(cat "$pidfile")); log $log"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  now) dump ;;
  loop) loop ;;
  status) if alive; then echo "running (pid $(cat "$pidfile"))"; else echo "not running"; exit 3; fi ;;
  *) echo "usage: MLFLOW_BACKUP_DIR=DIR bash scripts/mlflow_backup.sh start|stop|restart|status|now" >&2; exit 2 ;;
esac
