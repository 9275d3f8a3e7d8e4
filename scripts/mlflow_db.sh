#!/usr/bin/env bash
# Idempotent: the PostgreSQL role and database behind the MLflow tracking server, with the role's
# password read from a file (never committed, never on a command line).
#
#   bash scripts/mlflow_db.sh [--server] [--create-password] [--restore-from DIR] PASSWORD_FILE
#
# PASSWORD_FILE holds one line of at least 16 characters from [A-Za-z0-9._~-], e.g. made with
#   openssl rand -hex 24 > ~/.mlflow-db-password.txt && chmod 600 ~/.mlflow-db-password.txt
# It creates (or updates the password of) the role $MLFLOW_DB_ROLE (default mlflow), creates the
# database $MLFLOW_DB_NAME (default mlflow) owned by it, and adds the password for
# $MLFLOW_DB_HOST:$MLFLOW_DB_PORT (default 127.0.0.1:5432) to $PGPASSFILE (default ~/.pgpass, mode
# 600), so that `mlflow server --backend-store-uri postgresql://mlflow@127.0.0.1:5432/mlflow` logs in
# without the password in its URI. The admin connection is $PSQL_ADMIN (default `sudo -u postgres
# psql`, Debian's peer authentication on the local socket).
#
# On the cluster's head (cluster.yaml's head_setup_commands):
#   --server           Debian/Ubuntu's PostgreSQL server (postgresql-common, via sudo): its cluster made if
#                      there is none, listen_addresses = 127.0.0.1 (nothing else reaches it), started.
#   --create-password  make PASSWORD_FILE (48 hex digits, mode 600) if it does not exist: the password is
#                      made on the head and never leaves it.
#   --restore-from DIR on a database with no tables yet (a new head), restore DIR/mlflow.dump, the newest
#                      dump scripts/mlflow_backup.sh wrote to the shared volume; nothing there: a new store.
set -euo pipefail
server=0 create=0 restore_dir=""
while [ $# -gt 1 ]; do
  case "$1" in
    --server) server=1 ;;
    --create-password) create=1 ;;
    --restore-from) restore_dir="${2:?--restore-from needs a folder}"; shift ;;
    *) echo "[mlflow_db] unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
pwfile="${1:?usage: bash scripts/mlflow_db.sh [--server] [--create-password] [--restore-from DIR] PASSWORD_FILE}"
role="${MLFLOW_DB_ROLE:-mlflow}"
db="${MLFLOW_DB_NAME:-mlflow}"
host="${MLFLOW_DB_HOST:-127.0.0.1}"
port="${MLFLOW_DB_PORT:-5432}"
passfile="${PGPASSFILE:-$HOME/.pgpass}"
admin="${PSQL_ADMIN:-sudo -u postgres psql}"

if [ "$server" = 1 ]; then
  # The newest installed major version's cluster (Debian's layout: /etc/postgresql/<version>/<cluster>).
  ver="$(ls /usr/lib/postgresql | sort -n | tail -1)"
  [ -n "$ver" ] || { echo "[mlflow_db] no PostgreSQL installed (apt-get install postgresql)" >&2; exit 2; }
  cluster="${MLFLOW_PG_CLUSTER:-main}"
  if ! sudo pg_lsclusters -h "$ver" "$cluster" >/dev/null 2>&1; then
    echo "[mlflow_db] creating PostgreSQL $ver cluster $cluster"
    # UTF-8 whatever locale the session has (a C/POSIX one would make it SQL_ASCII, whose text psycopg 3
    # returns as bytes: MLflow's server then dies in SQLAlchemy's version check)
    sudo pg_createcluster --encoding=UTF8 --locale=C.UTF-8 "$ver" "$cluster" -p "$port" >/dev/null
  fi
  # loopback only: a file of its own in the cluster's conf.d (read after postgresql.conf, so it wins)
  conf="/etc/postgresql/$ver/$cluster/conf.d/imbalance-sweeps.conf"
  want="listen_addresses = '127.0.0.1'   # scripts/mlflow_db.sh: nothing but this machine reaches it"
  if [ "$(sudo cat "$conf" 2>/dev/null)" != "$want" ]; then
    echo "$want" | sudo tee "$conf" >/dev/null
    restart=1
  fi
  if [ "$(sudo pg_lsclusters -h "$ver" "$cluster" | awk '{print $4}')" = online ]; then
    if [ "${restart:-0}" = 1 ]; then sudo pg_ctlcluster "$ver" "$cluster" restart; fi
  else
    sudo pg_ctlcluster "$ver" "$cluster" start
  fi
  for _ in $(seq 60); do
    pg_isready -q -h "$host" -p "$port" && break
    sleep 0.5
  done
  pg_isready -q -h "$host" -p "$port" || { echo "[mlflow_db] PostgreSQL does not answer on $host:$port" >&2; exit 1; }
  echo "[mlflow_db] PostgreSQL $ver/$cluster up on 127.0.0.1:$port only"
fi

if [ "$create" = 1 ] && ! [ -e "$pwfile" ]; then
  ( umask 077; mkdir -p "$(dirname "$pwfile")"; od -An -tx1 -N24 /dev/urandom | tr -d ' \n' > "$pwfile" )
  echo "[mlflow_db] made a new password in $pwfile (mode 600; it stays on this machine)"
fi
[ -r "$pwfile" ] || { echo "[mlflow_db] password file $pwfile is missing or unreadable" >&2; exit 2; }
pw="$(head -n1 "$pwfile" | tr -d '\r\n')"
if ! [[ "$pw" =~ ^[A-Za-z0-9._~-]{16,}$ ]]; then
  echo "[mlflow_db] the password in $pwfile must be one line of >= 16 characters from [A-Za-z0-9._~-]" \
       "(e.g. openssl rand -hex 24)" >&2
  exit 2
fi
for name in "$role" "$db"; do
  [[ "$name" =~ ^[a-z_][a-z0-9_]*$ ]] || { echo "[mlflow_db] name $name: use [a-z0-9_]" >&2; exit 2; }
done

# The SQL goes through stdin: the password never appears in a process's arguments.
$admin -v ON_ERROR_STOP=1 -q -d postgres <<SQL
\set role '$role'
\set db '$db'
\set pw '$pw'
SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'pw') \gexec
SELECT format('CREATE DATABASE %I OWNER %I ENCODING %L LC_COLLATE %L LC_CTYPE %L TEMPLATE template0', :'db', :'role', 'UTF8', 'C', 'C') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
# MLflow's PostgreSQL driver (psycopg 3) needs a UTF-8 database: text from an SQL_ASCII one comes back as bytes
encoding="$($admin -tAq -d postgres -c "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = '$db'")"
if [ "$encoding" != UTF8 ]; then
  echo "[mlflow_db] database $db is $encoding, not UTF8: MLflow's server cannot use it (drop it, or dump and" \
       "restore it into a UTF8 database)" >&2
  exit 1
fi

umask 077
touch "$passfile"
chmod 600 "$passfile"
entry="$host:$port:$db:$role:$pw"
{ grep -v -F "$host:$port:$db:$role:" "$passfile" || true; echo "$entry"; } > "$passfile.tmp"
mv "$passfile.tmp" "$passfile"
echo "[mlflow_db] role $role and database $db ready on $host:$port; password in $passfile"
echo "[mlflow_db] backend store URI: postgresql://$role@$host:$port/$db"

if [ -n "$restore_dir" ]; then
  tables="$(PGPASSFILE="$passfile" psql -h "$host" -p "$port" -U "$role" -d "$db" -tAq \
            -c "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")"
  dump="$restore_dir/mlflow.dump"
  if [ "$tables" != 0 ]; then
    echo "[mlflow_db] database $db holds $tables tables: nothing restored"
  elif [ -s "$dump" ]; then
    t0=$SECONDS
    # As the role itself (its objects stay its own); the dump's owner and grants are not replayed.
    PGPASSFILE="$passfile" pg_restore -h "$host" -p "$port" -U "$role" -d "$db" --no-owner --no-privileges \
      --exit-on-error "$dump"
    runs="$(PGPASSFILE="$passfile" psql -h "$host" -p "$port" -U "$role" -d "$db" -tAq \
            -c "SELECT count(*) FROM runs" 2>/dev/null || echo '?')"
    echo "[mlflow_db] restored $dump ($(stat -c %s "$dump") bytes, written $(date -r "$dump" '+%F %T %Z'))" \
         "into $db: $runs runs, $((SECONDS - t0)) s"
  else
    echo "[mlflow_db] no dump in $restore_dir: a new, empty MLflow store"
  fi
fi
