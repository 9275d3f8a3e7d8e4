"""What the head's MLflow dump costs at the size of a grid (docs/cluster.md, "MLflow's database survives
a lost head"): a throwaway PostgreSQL with MLflow's schema, N runs of the shape of a published run
(its metrics, latest metrics, params and tags, copied from docs/results/mnist-paper/mlflow.db), then
scripts/mlflow_backup.sh `now` (pg_dump -Fc) and scripts/mlflow_db.sh --restore-from into a new, empty
database, timed.

    sudo .venv/bin/python scripts/measure_mlflow_backup.py --runs 2300 23000

Needs Debian's PostgreSQL server binaries; as root it runs PostgreSQL as the `postgres` user. Everything
listens on 127.0.0.1 and is removed at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "docs" / "results" / "mnist-paper" / "mlflow.db"
RUN_TABLES = ("metrics", "latest_metrics", "params", "tags")


def _as_postgres(cmd):
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, nargs="+", default=[2300, 23000])
    args = ap.parse_args(argv)
    if len(args.runs) > 1:                  # each size on its own server, in its own process
        return max(subprocess.run([sys.executable, __file__, "--runs", str(n)]).returncode for n in args.runs)
    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))[-1].parent
    d = Path(tempfile.mkdtemp(prefix="pgm", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="pgm-work", dir="/tmp"))
    port = _free_port()
    pid = None
    try:
        if os.geteuid() == 0:
            shutil.chown(d, "postgres")
        subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(d / "data"), "-U", "postgres",
                                     "--auth-local=trust", "--auth-host=scram-sha-256"]), check=True,
                       capture_output=True)
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(d / "data"), "-l", str(d / "log"), "-w",
                                     "-o", f"-p {port} -k {d} -c listen_addresses=127.0.0.1", "start"]),
                       check=True, capture_output=True)
        pid = int((d / "data" / "postmaster.pid").read_text().split()[0])
        pwfile, pgpass = work / "pw", work / "pgpass"
        pwfile.write_text(os.urandom(18).hex() + "\n")
        admin = " ".join(_as_postgres([str(bindir / "psql"), "-h", str(d), "-p", str(port), "-U", "postgres"]))
        env = {**os.environ, "PSQL_ADMIN": admin, "MLFLOW_DB_PORT": str(port), "PGPASSFILE": str(pgpass),
               "HOME": str(work), "MLFLOW_BACKUP_DIR": str(work / "shared")}
        db = lambda *a: subprocess.run(["bash", str(ROOT / "scripts" / "mlflow_db.sh"), *a, str(pwfile)],  # noqa
                                       env=env, check=True, capture_output=True, text=True).stdout
        db()
        uri = f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
        os.environ["PGPASSFILE"] = str(pgpass)

        def psql(q: str, admin_conn=False) -> str:
            cmd = (admin.split() + ["-d", "postgres"]) if admin_conn else \
                [str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "-d", "mlflow"]
            return subprocess.run(cmd + ["-tAq", "-v", "ON_ERROR_STOP=1", "-c", q], env=env, check=True,
                                  capture_output=True, text=True).stdout.strip()

        for n in args.runs[:1]:
            # MLflow's schema (its own migrations), one run of a published run's shape
            from mlflow.entities import Metric, Param, RunTag
            from mlflow.tracking import MlflowClient
            client = MlflowClient(tracking_uri=uri)
            exp = client.create_experiment(f"measure-{n}-{int(time.time())}")
            src = sqlite3.connect(SOURCE)
            run_uuid = src.execute("SELECT run_uuid FROM runs WHERE status = 'FINISHED' LIMIT 1").fetchone()[0]
            metrics = [Metric(k, v, t, s) for k, v, t, s in
                       src.execute("SELECT key, value, timestamp, step FROM metrics WHERE run_uuid = ?", (run_uuid,))]
            params = [Param(k, v) for k, v in
                      src.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_uuid,))]
            tags = [RunTag(k, v) for k, v in src.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_uuid,))
                    if not k.startswith("mlflow.")]
            run = client.create_run(exp)
            client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
            client.set_terminated(run.info.run_id)
            tpl = run.info.run_id
            t0 = time.monotonic()
            cols = {t: psql(f"SELECT string_agg(quote_ident(column_name), ',' ORDER BY ordinal_position) FROM "
                            f"information_schema.columns WHERE table_name = '{t}'").split(",")
                    for t in ("runs", *RUN_TABLES)}
            new_id = "md5(g::text || '{tag}')"
            for t in ("runs", *RUN_TABLES):
                sel = ",".join(new_id.format(tag=n) if c == "run_uuid" else
                               (f"'run-' || g" if (t == "runs" and c == "name") else c) for c in cols[t])
                psql(f"INSERT INTO {t} ({','.join(cols[t])}) SELECT {sel} FROM {t}, generate_series(2, {n}) g "
                     f"WHERE {t}.run_uuid = '{tpl}'")
            t_fill = time.monotonic() - t0
            rows = {t: int(psql(f"SELECT count(*) FROM {t}")) for t in ("runs", *RUN_TABLES)}
            size = psql("SELECT pg_size_pretty(pg_database_size('mlflow'))")
            t0 = time.monotonic()
            out = subprocess.run(["bash", str(ROOT / "scripts" / "mlflow_backup.sh"), "now"], env=env, check=True,
                                 capture_output=True, text=True).stdout.strip()
            t_dump = time.monotonic() - t0
            dump = work / "shared" / "mlflow.dump"
            psql("DROP DATABASE mlflow WITH (FORCE)", admin_conn=True)
            t0 = time.monotonic()
            restored = db("--restore-from", str(work / "shared"))
            t_restore = time.monotonic() - t0
            print(f"{rows['runs']:,} runs ({sum(rows.values()):,} rows: {rows}); database {size}; filled in "
                  f"{t_fill:.0f} s\n  dump: {dump.stat().st_size / 2**20:.1f} MiB in {t_dump:.1f} s ({out})\n"
                  f"  restore into a new database: {t_restore:.1f} s "
                  f"({[ln for ln in restored.splitlines() if 'restored' in ln][0]})", flush=True)
        return 0
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
            time.sleep(2)
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
