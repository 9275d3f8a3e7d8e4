"""MLflow the way the cluster runs it: a tracking server on a real PostgreSQL, and sweeps that survive it.

A throwaway PostgreSQL from Debian's packages (initdb + pg_ctl on its own data folder and port, as the
`postgres` user when the tests run as root; stopped by its PID) gets its role and database from
scripts/mlflow_db.sh (password from a file, kept in a PGPASSFILE), and an MLflow server on it is
started by scripts/mlflow_server.sh, as cluster.yaml does on the head. Then:

* bad tracking URIs (wrong password, missing database): exit 2 before anything starts, the URI named
  without its password;
* two sweeps logging to the server at the same time (two driver processes) each end with their own
  networks exactly once; runs carry the training start/end and the training subset as a dataset;
* the server is killed while results arrive and started again a little later: every network ends in
  MLflow exactly once, and the progress lines said what happened;
* the server stays away longer than --tracking-retry-s: training finishes, exit 1 naming the networks
  not logged; `--resume` logs them without training again.

Background: ../shared/notes/postgresql-mlflow.md.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from sweeps import full_grid
from sweeps.grids import describe
from sweeps.tracking import subset_name, trial_key
from conftest import final_reports  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PYTHON = Path(sys.executable)
MLFLOW = PYTHON.parent / "mlflow"
SHARED = Path(__file__).resolve().parents[2] / "shared"


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    pytest.fail("PostgreSQL's initdb is missing: run `bash scripts/setup.sh` as root (it installs Debian's "
                "postgresql package), or `apt-get install -y --no-install-recommends postgresql`")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Postgres:
    """A throwaway PostgreSQL server: own data folder, socket folder and port; stopped by its PID."""

    def __init__(self):
        self.bin = _pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="pgt", dir="/tmp"))    # short: socket paths are limited
        self.port = _free_port()
        self.password_file = self.dir / "mlflow-db-password"       # what the user provides on the cluster
        self.password_file.write_text(os.urandom(18).hex() + "\n")
        self.password_file.chmod(0o600)
        self.pgpass = self.dir / "pgpass"
        self.pid: int | None = None

    def start(self) -> None:
        superuser_pw = self.dir / "superuser-password"
        superuser_pw.write_text(os.urandom(12).hex() + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            shutil.chown(superuser_pw, "postgres")
        data = self.dir / "data"
        # local socket: trust (the admin, like Debian's peer auth for `sudo -u postgres psql`);
        # TCP: passwords (scram), as MLflow connects
        subprocess.run(_as_postgres([str(self.bin / "initdb"), "-D", str(data), "-U", "postgres",
                                     "--auth-local=trust", "--auth-host=scram-sha-256",
                                     f"--pwfile={superuser_pw}"]), check=True, capture_output=True)
        subprocess.run(_as_postgres([str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"), "-w",
                                     "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start"]),
                       check=True, capture_output=True)
        self.pid = int((data / "postmaster.pid").read_text().split()[0])
        env = {**os.environ, "PSQL_ADMIN": " ".join(_as_postgres([str(self.bin / "psql"), "-h", str(self.dir),
                                                                   "-p", str(self.port), "-U", "postgres"])),
               "MLFLOW_DB_PORT": str(self.port), "PGPASSFILE": str(self.pgpass)}
        subprocess.run(["bash", str(ROOT / "scripts" / "mlflow_db.sh"), str(self.password_file)], env=env,
                       check=True, capture_output=True)

    def uri(self, password: str | None = None, db: str = "mlflow") -> str:
        user = "mlflow" if password is None else f"mlflow:{password}"
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGINT)              # PostgreSQL's "fast" shutdown
            for _ in range(200):
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                os.kill(self.pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on the PostgreSQL, started and stopped by scripts/mlflow_server.sh."""

    def __init__(self, pg: Postgres, folder: Path):
        self.folder, self.port = folder, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pidfile, self.log = folder / "mlflow.pid", folder / "mlflow.log"
        # one worker, no job runner: quick to start on a loaded 2-core machine (see test_mlflow_ui.py)
        self.env = {**os.environ, "MLFLOW_BACKEND_URI": pg.uri(), "MLFLOW_ARTIFACTS": str(folder / "artifacts"),
                    "MLFLOW_PORT": str(self.port), "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PIDFILE": str(self.pidfile),
                    "MLFLOW_LOG": str(self.log), "MLFLOW_BIN": str(MLFLOW), "MLFLOW_WORKERS": "1",
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PGPASSFILE": str(pg.pgpass)}

    def _script(self, action: str) -> subprocess.CompletedProcess:
        res = subprocess.run(["bash", str(ROOT / "scripts" / "mlflow_server.sh"), action], env=self.env,
                             capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, f"mlflow_server.sh {action}: {res.stdout}{res.stderr}"
        return res

    def start(self) -> float:
        t0 = time.monotonic()
        self._script("start")
        return time.monotonic() - t0

    def stop(self) -> None:
        self._script("stop")

    @property
    def pid(self) -> int:
        return int(self.pidfile.read_text())

    def kill(self) -> None:
        """An outage: SIGKILL to the server and its workers, no clean-up."""
        os.killpg(self.pid, signal.SIGKILL)
        while True:
            try:
                os.killpg(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False


@pytest.fixture(scope="module")
def pg():
    p = Postgres()
    try:
        p.start()
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def server(pg, tmp_path_factory):
    s = MlflowServer(pg, tmp_path_factory.mktemp("mlflow-server"))
    s.started_in = s.start()
    try:
        yield s
    finally:
        pid = s.pid if s.pidfile.exists() else None
        s.stop()
        if pid is not None:                       # nothing of it is left on the port
            with pytest.raises(ProcessLookupError):
                os.killpg(pid, 0)
            assert not s.healthy()


def _sweep_args(name: str, storage: Path, uri: str, methods=("baseline", "ros"), seeds=2, pack=2,
                iterations=10) -> list[str]:
    return ["--preset", "quick", "--datasets", "mnist-sample", "--imbalance", "step", "--rho", "10", "--mu", "0.5",
            "--methods", *methods, "--repetitions", str(seeds), "--iterations", str(iterations),
            "--pack-size", str(pack), "--max-failures", "0", "--name", name, "--storage-path", str(storage),
            "--tracking-uri", uri]


def _runs(uri: str, name: str):
    from mlflow.tracking import MlflowClient
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(name)
    assert exp is not None, f"no experiment {name}"
    return c, c.search_runs([exp.experiment_id], max_results=1000)


def _main(argv) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = full_grid.main(argv)
    print(buf.getvalue())
    return rc, buf.getvalue()


def test_the_index_read_from_postgresqls_tables_is_what_search_runs_returns(pg, monkeypatch):
    from test_logging_process import check_the_index_is_what_search_runs_returns
    check_the_index_is_what_search_runs_returns(pg.uri(pg.password_file.read_text().strip()), monkeypatch)


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("case", ["wrong password", "missing database"])
def test_bad_postgres_uri_exits_2_naming_it_without_password(pg, tmp_path, capsys, no_ray, case):
    real = pg.password_file.read_text().strip()
    password, db, why = (("not-the-password", "mlflow", 'password authentication failed for user "mlflow"')
                         if case == "wrong password" else (real, "nosuchdb", 'database "nosuchdb" does not exist'))
    uri = pg.uri(password, db)
    argv = _sweep_args("bad", tmp_path / "ray", uri)
    assert full_grid.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert pg.uri("***", db) in err and why in err, err
    assert password not in err
    assert not (tmp_path / "ray").exists()


# --------------------------------------------------------------------------- the server on PostgreSQL

def _check_training_runs(runs, configs_by_key):
    """Every run: its start/end are its training (ms), its training subset is a dataset input."""
    for r in runs:
        c = configs_by_key[r.data.tags["trial_key"]]
        assert r.info.status == "FINISHED" and r.info.run_name == describe(c)
        dur = (r.info.end_time - r.info.start_time) / 1000
        train_s = r.data.metrics["train_seconds"]
        if c.method.startswith("two-phase"):              # phase 1 start .. phase 2 end
            assert dur >= train_s - 0.002, (describe(c), dur, train_s)
        else:                                             # its training loop, not the 30-75 ms of logging
            assert train_s > 0 and abs(dur - train_s) <= 0.002, (describe(c), dur, train_s)
        (inp,) = r.inputs.dataset_inputs
        ds = inp.dataset
        assert ds.name == subset_name(c) and re.fullmatch(r"[0-9a-f]{16}", ds.digest)
        assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "train"}
        src = json.loads(ds.source)
        assert src["dataset"] == "mnist-sample" and src["subset"]["seed"] == c.seed
        assert json.loads(ds.profile)["num_examples"] == r.data.metrics["train_examples"]
    # the runs of one subset (same seed; baseline and ros) share one dataset, other subsets differ
    by_seed: dict[int, set] = {}
    for r in runs:
        d = r.inputs.dataset_inputs[0].dataset
        by_seed.setdefault(configs_by_key[r.data.tags["trial_key"]].seed, set()).add((d.name, d.digest))
    assert all(len(v) == 1 for v in by_seed.values()) and len(set.union(*by_seed.values())) == len(by_seed)


def _configs(name: str, methods=("baseline", "ros"), seeds=2, iterations=10):
    from imbalance_core.trial import TrialConfig
    cs = [TrialConfig(dataset="mnist-sample", imbalance="step", rho=10.0, mu=0.5, method=m, seed=s,
                      iterations=iterations) for s in range(seeds) for m in methods]
    return {trial_key(c, name): c for c in cs}


def test_two_sweeps_at_once_each_log_their_networks_exactly_once(server, ray_local, tmp_path):
    """Two drivers (processes) on one Ray cluster, both logging to the one tracking server."""
    import ray
    print(f"MLflow server on PostgreSQL answered /health after {server.started_in:.1f} s (new database)")
    assert "mlflow" in Path(f"/proc/{server.pid}/cmdline").read_text()      # the PID file holds MLflow's PID
    t0 = time.monotonic()
    procs = {}
    for name in ("pg-a", "pg-b"):
        log = open(tmp_path / f"{name}.log", "w")
        procs[name] = (subprocess.Popen([str(PYTHON), str(ROOT / "sweeps" / "full_grid.py"),
                                         *_sweep_args(name, tmp_path / "ray", server.url, pack=4),
                                         "--address", ray.get_runtime_context().gcs_address],
                                        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONPATH": str(ROOT)}), log)
    for name, (p, log) in procs.items():
        p.wait(timeout=300)
        log.close()
        out = (tmp_path / f"{name}.log").read_text()
        assert p.returncode == 0, out[-4000:]
        assert "4 networks finished, 0 failed" in out
    print(f"two sweeps at once: {time.monotonic() - t0:.1f} s")
    for name in ("pg-a", "pg-b"):
        want = _configs(name)
        _, runs = _runs(server.url, name)
        keys = [r.data.tags["trial_key"] for r in runs]
        assert sorted(keys) == sorted(want), name                           # its own networks, each once
        assert {r.data.tags["sweep"] for r in runs} == {name}
        _check_training_runs(runs, want)


def _kill_after_first_logged(monkeypatch, server, restart_after_s: float | None, seen: dict, sweep: str):
    """Kill the server as soon as the first network is in MLflow (more results are still to come); start it
    again (in the background) `restart_after_s` after a progress line has said that MLflow is away (so the
    outage is seen whatever the machine's speed: a fixed delay let a loaded machine's next result arrive
    after the server was back), or leave it away (None)."""
    from sweeps.logging_process import LoggingProcess
    real = LoggingProcess.log_networks                # the driver's side of its logging process (a trial's networks)
    real_line = full_grid.Progress._line
    done, said_away = threading.Event(), threading.Event()

    def line(self, trials):
        out = real_line(self, trials)
        if done.is_set() and "MLflow unreachable for" in out:
            said_away.set()
        return out

    def restart():
        said_away.wait(timeout=300)
        time.sleep(restart_after_s)
        seen["restart_called"] = time.monotonic()
        server.start()
        seen["back"] = time.monotonic()

    def log_networks(self, *a, **k):
        out = real(self, *a, **k)
        if not done.is_set():
            done.set()
            seen["reported_at_kill"] = full_grid.SESSIONS[sweep].logger.waiting    # networks reported so far
            server.kill()
            seen["killed"] = time.monotonic()
            if restart_after_s is not None:
                seen["thread"] = threading.Thread(target=restart, daemon=True)
                seen["thread"].start()
        return out

    monkeypatch.setattr(LoggingProcess, "log_networks", log_networks)
    monkeypatch.setattr(full_grid.Progress, "_line", line)


def test_server_killed_while_results_arrive_loses_nothing(server, ray_local, tmp_path, monkeypatch):
    name = "pg-outage"
    seen: dict = {}
    _kill_after_first_logged(monkeypatch, server, 2.0, seen, name)
    # one trial at a time, long enough that results keep arriving through the outage (trials of 20 iterations on
    # 2 workers all ended before the first network was logged)
    argv = _sweep_args(name, tmp_path / "ray", server.url, methods=("baseline", "ros", "rus"), seeds=2, pack=1,
                       iterations=200) + ["--max-concurrent", "1"]
    t0 = time.monotonic()
    rc, out = _main(argv)
    seen["thread"].join(timeout=60)
    assert rc == 0, out
    assert "6 networks finished, 0 failed" in out and "NOT LOGGED" not in out
    retries = re.findall(r"MLflow unreachable for \d+ s \(([^)]*)\) logging \S+: retry (\d+) in", out)
    back = re.search(r"MLflow is back after (\d+) s away \((\d+) retries\)", out)
    assert retries and back, out
    assert int(back.group(2)) == len(retries) == int(retries[-1][1])
    assert re.search(r"MLflow was unreachable 1 time\(s\): \d+ s \(\d+ retries\); nothing lost", out)
    assert seen["reported_at_kill"] < 6                   # results kept arriving while the server was away
    during = [ln for ln in out.splitlines() if "networks done" in ln and "MLflow unreachable for" in ln]
    assert during, out                                     # ... and the progress lines said it was away
    away = seen["back"] - seen["killed"]
    status_lines = sum("MLflow unreachable for" in ln for ln in out.splitlines())
    print(f"OUTAGE: server killed after the 1st network was logged, restart began {seen['restart_called'] - seen['killed']:.1f} s "
          f"later, healthy again after {away:.1f} s away; the sweep saw {back.group(1)} s, {back.group(2)} retries "
          f"({status_lines} lines said so; {seen['reported_at_kill']} of 6 networks reported at the kill); sweep took {time.monotonic() - t0:.1f} s")
    _, runs = _runs(server.url, name)
    want = _configs(name, ("baseline", "ros", "rus"), 2, 200)
    assert sorted(r.data.tags["trial_key"] for r in runs) == sorted(want)     # every network exactly once
    _check_training_runs(runs, want)


def test_server_away_past_the_bound_then_resume_logs_without_training(server, ray_local, tmp_path, monkeypatch):
    name = "pg-away"
    seen: dict = {}
    _kill_after_first_logged(monkeypatch, server, None, seen, name)
    # packs of 1: a trial's networks are logged in one exchange, so the kill comes after exactly one network
    argv = _sweep_args(name, tmp_path / "ray", server.url, pack=1) + ["--tracking-retry-s", "3"]
    rc, out = _main(argv)
    assert rc == 1, out
    assert "4 networks finished, 0 failed" in out                              # training finished
    assert "giving up retrying (bound 3 s)" in out
    not_logged = re.findall(r"NOT LOGGED to MLflow: (\S+): ", out)
    want = _configs(name)
    assert len(not_logged) == 3 and set(not_logged) < {describe(c) for c in want.values()}, out
    assert f"log them (no retraining) with: --resume --name {name}" in out
    lines = final_reports(tmp_path / "ray" / name)
    assert sum(lines.values()) == 4

    monkeypatch.undo()
    server.start()
    _, runs = _runs(server.url, name)
    first = {r.data.tags["trial_key"] for r in runs}
    assert len(first) == 1 and describe(want[first.pop()]) not in not_logged
    rc, out = _main(argv + ["--resume"])
    assert rc == 0, out
    # the restored MLflow callback logs them (through its logging process); the reconciliation finds nothing left
    assert "that finished before this run have networks missing from MLflow" in out, out
    assert "reconciliation: logged 0 finished networks that were missing from MLflow" in out
    assert final_reports(tmp_path / "ray" / name) == lines                    # nothing trained again
    _, runs = _runs(server.url, name)
    assert sorted(r.data.tags["trial_key"] for r in runs) == sorted(want)
    _check_training_runs(runs, want)
