#!/usr/bin/env bash
# Idempotent: the PostgreSQL role and database behind the MLflow tracking server, with the role's
# password read from a file you provide (never committed, never on a command line).
#
#   bash scripts/mlflow_db.sh PASSWORD_FILE
#
# PASSWORD_FILE holds one line of at least 16 characters from [A-Za-z0-9._~-], e.g. made with
#   openssl rand -hex 24 > ~/.mlflow-db-password.txt && chmod 600 ~/.mlflow-db-password.txt
# It creates (or updates the password of) the role $MLFLOW_DB_ROLE (default mlflow), creates the
# database $MLFLOW_DB_NAME (default mlflow) owned by it, and adds the password for
# $MLFLOW_DB_HOST:$MLFLOW_DB_PORT (default 127.0.0.1:5432) to $PGPASSFILE (default ~/.pgpass, mode
# 600), so that `mlflow server --backend-store-uri postgresql://mlflow@127.0.0.1:5432/mlflow` logs in
# without the password in its URI. The admin connection is $PSQL_ADMIN (default `sudo -u postgres
# psql`, Debian's peer authentication on the local socket).
set -euo pipefail
pwfile="${1:?usage: bash scripts/mlflow_db.sh PASSWORD_FILE}"
role="${MLFLOW_DB_ROLE:-mlflow}"
db="${MLFLOW_DB_NAME:-mlflow}"
host="${MLFLOW_DB_HOST:-127.0.0.1}"
port="${MLFLOW_DB_PORT:-5432}"
passfile="${PGPASSFILE:-$HOME/.pgpass}"
admin="${PSQL_ADMIN:-sudo -u postgres psql}"

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
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL

umask 077
touch "$passfile"
chmod 600 "$passfile"
entry="$host:$port:$db:$role:$pw"
{ grep -v -F "$host:$port:$db:$role:" "$passfile" || true; echo "$entry"; } > "$passfile.tmp"
mv "$passfile.tmp" "$passfile"
echo "[mlflow_db] role $role and database $db ready on $host:$port; password in $passfile"
echo "[mlflow_db] backend store URI: postgresql://$role@$host:$port/$db"
