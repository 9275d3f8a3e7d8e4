"""The driver at scale: a preset's whole plan rehearsed through Ray Tune and MLflow (`full_grid.py --rehearse`),
with the driver killed part-way and resumed.

    .venv/bin/python benchmarks/rehearsal.py [--kill-at 0.5] [--out DIR] [-- FULL_GRID_ARGS...]

FULL_GRID_ARGS default to `--preset mnist --data-dir ../shared/data --max-concurrent 1` (23,000 networks, 4,500
trials; one trial at a time: a rehearsed trial is shorter than a Ray actor's start, and Tune's actor reuse would
only churn a second worker, see README "The driver at scale"); pass e.g. `-- --preset mnist --data-dir
../shared/data --rho 10 100 --max-concurrent 1` for a slice. The driver runs as its own
process (its own session and Ray temp dir), is SIGKILLed once `--kill-at` of the networks are in MLflow
(0: never), and is then run again with `--resume`. Prints, as rates and ratios:
  wall time (first run, resumed run, total), with the machine's CPU of each run split by process (the
  driver, its logging processes, the trial workers, Ray's own); networks logged per second (first run, overall); the target
  rate (the whole grid in 30 minutes); driver CPU split (MLflow logging / figures / Tune and the rest, from
  the driver's own `rehearsal driver:` lines) and peak memory; Tune state and MLflow store sizes; time to
  restore on --resume; runs in MLflow vs networks (each exactly once); report.py and findings.py times.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")
PY = sys.executable
TARGET_S = 30 * 60                    # the whole rehearsal of the mnist preset in 30 minutes here


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def mb(n: float) -> str:
    return f"{n / 2 ** 20:,.1f} MB"


def finished_runs(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=1) as con:
            return con.execute("select count(*) from runs where status = 'FINISHED' and "
                               "lifecycle_stage = 'active'").fetchone()[0]
    except sqlite3.Error:
        return -1


def kill_group(proc: subprocess.Popen, ray_tmp: Path) -> None:
    """SIGKILL the driver's session and every process that uses its Ray temp dir (raylet, GCS, workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(ray_tmp).encode() in cmd and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _stat(pid: str) -> tuple[int, float, str] | None:
    """(start time in ticks, CPU seconds, command line) of a live process, from /proc (None for a zombie:
    a killed run's processes stay as zombies where nothing reaps them, with their CPU times)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return None
    return None if f[0] == "Z" else (int(f[19]), (int(f[11]) + int(f[12])) / TICKS, cmd)


def kind(pid: int, driver: int, cmd: str) -> str:
    """Which part of the rehearsal a process is."""
    if pid == driver:
        return "driver (Tune)"
    if "_serve" in cmd:
        return "MLflow logging processes"
    if cmd.startswith("ray::"):
        return "trial workers"
    return "Ray's own (raylet, GCS, agents)" if any(k in cmd for k in ("raylet", "gcs_server", "ray/", "ray.")) \
        else "other"


class CpuByProcess:
    """CPU seconds of every process started since the driver (the driver, its logging processes, Ray's), by
    `kind`; sampled every call of `sample` (a process that exits between samples loses its
    last interval), and the whole machine's CPU over the same time (/proc/stat)."""

    def __init__(self, driver: int):
        self.driver, self.cpu, self.kinds = driver, {}, {}
        # processes started with or after this run's driver (not an earlier run's survivors)
        self.t0 = Path(f"/proc/{driver}/stat").read_text().rsplit(")", 1)[1].split()[19]
        self.machine0, self.steal0 = self._machine()
        self.steal = 0.0

    @staticmethod
    def _machine() -> tuple[float, float]:
        """(CPU seconds the machine's processes ran, seconds the hypervisor took from this VM: "steal")."""
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        user, nice, system, irq, softirq, steal = f[0], f[1], f[2], f[5], f[6], f[7]
        return (user + nice + system + irq + softirq) / TICKS, steal / TICKS

    def sample(self) -> None:
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            st = _stat(pid)
            if st and st[0] >= int(self.t0):
                self.cpu[pid] = st[1]
                self.kinds[pid] = kind(int(pid), self.driver, st[2])      # Ray renames its workers late
        machine, steal = self._machine()
        self.machine, self.steal = machine - self.machine0, steal - self.steal0

    def line(self) -> str:
        by: dict[str, float] = {}
        for pid, c in self.cpu.items():
            by[self.kinds[pid]] = by.get(self.kinds[pid], 0.0) + c
        total = max(self.machine, 1e-9)
        return f"{self.machine:.0f} s of CPU on the machine = " + ", ".join(
            f"{k} {v:.0f} s ({v / total:.0%})" for k, v in sorted(by.items(), key=lambda kv: -kv[1])) + \
            f"; CPU taken by the hypervisor (steal) {self.steal:.0f} s"


def run_driver(args: list[str], env: dict, log: Path, db: Path, kill_after: int | None, ray_tmp: Path) -> dict:
    """Run full_grid.py; kill it once `kill_after` runs are in MLflow. Returns timings and its output."""
    t0 = time.monotonic()
    out = {"lines": [], "first_progress_s": None}
    proc = subprocess.Popen([PY, str(ROOT / "sweeps" / "full_grid.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def read():
        with log.open("a") as f:
            for line in proc.stdout:
                f.write(line)
                if line.startswith("[sweep"):
                    out["lines"].append(line.rstrip())
                    # restored: the first progress line or, when every trial had ended before the kill, the
                    # logger's line on what they left unlogged (else the reconciliation's)
                    if out["first_progress_s"] is None and any(
                            s in line for s in ("networks done", "missing from MLflow", "reconciliation:")):
                        out["first_progress_s"] = time.monotonic() - t0

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    killed = False
    cpu = CpuByProcess(proc.pid)
    while proc.poll() is None:
        time.sleep(1)
        cpu.sample()
        if kill_after is not None and finished_runs(db) >= kill_after:
            kill_group(proc, ray_tmp)
            killed = True
    reader.join(10)
    out.update(rc=proc.returncode, killed=killed, wall_s=time.monotonic() - t0, logged=finished_runs(db),
               cpu=cpu.line())
    return out


def driver_line(lines: list[str]) -> dict:
    """The last `rehearsal driver:` figures a driver printed."""
    pat = re.compile(r"driver: wall ([\d.]+) s, CPU ([\d.]+) s = MLflow logging ([\d.]+) s \+ figures ([\d.]+) s "
                     r"\+ Tune and the rest ([-\d.]+) s; (\d+) logging processes: CPU ([\d.]+) s \(figures ([\d.]+) s\); "
                     r"peak memory (\d+) MB")
    found = [m for m in map(pat.search, lines) if m]
    if not found:
        return {}
    m = found[-1]
    keys = ("wall", "cpu", "mlflow", "figures", "tune", "n_proc", "proc_cpu", "proc_figures", "peak_mb")
    return dict(zip(keys, map(float, m.groups())))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else ["--preset", "mnist", "--data-dir",
                                                              str((ROOT / ".." / "shared" / "data").resolve()),
                                                              "--max-concurrent", "1"]
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kill-at", type=float, default=0.5, help="fraction of the networks logged before the kill")
    p.add_argument("--out", help="keep the sweep's state here (default: a temp dir, removed)")
    a = p.parse_args(own)
    work = Path(a.out).resolve() if a.out else Path(tempfile.mkdtemp(prefix="rehearsal-"))
    work.mkdir(parents=True, exist_ok=True)
    db, storage, log = work / "mlflow.db", work / "ray", work / "driver.log"
    ray_tmp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONUNBUFFERED": "1"}
    args = [*extra, "--rehearse", "--name", "bench", "--tracking-uri", f"sqlite:///{db}", "--storage-path",
            str(storage)]

    dry = subprocess.run([PY, str(ROOT / "sweeps" / "full_grid.py"), *args, "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    m = re.search(r"sweep \S+: ([\d,]+) networks in ([\d,]+) trials", dry.stdout)
    if dry.returncode != 0 or not m:
        print(dry.stdout + dry.stderr)
        return 2
    n, trials = (int(x.replace(",", "")) for x in m.groups())
    print(f"rehearsal of {' '.join(extra)}: {n:,} networks in {trials:,} trials; {platform.node()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; state in {work}")

    kill_after = int(n * a.kill_at) if 0 < a.kill_at < 1 else None
    first = run_driver(args, env, log, db, kill_after, ray_tmp)
    end = "killed (SIGKILL)" if first["killed"] else f"exit {first['rc']}"
    print(f"first run: {first['wall_s']:.0f} s, {first['logged']:,} networks in MLflow, {end}; {first['cpu']}")
    second = None
    if first["killed"]:
        second = run_driver([*args, "--resume"], env, log, db, None, ray_tmp)
        print(f"resumed run: {second['wall_s']:.0f} s, exit {second['rc']}; {second['cpu']}")
    total_s = first["wall_s"] + (second["wall_s"] if second else 0)

    with sqlite3.connect(db) as con:
        keys = [k for (k,) in con.execute(
            "select t.value from tags t join runs r on r.run_uuid = t.run_uuid "
            "where t.key = 'trial_key' and r.lifecycle_stage = 'active' and r.status = 'FINISHED'")]
    sizes = {"tune": du(storage), "db": db.stat().st_size, "artifacts": du(work / "mlartifacts")}

    t = time.monotonic()
    rep = subprocess.run([PY, str(ROOT / "sweeps" / "report.py"), "--tracking-uri", f"sqlite:///{db}",
                          "--name", "bench-rehearsal", "--out", str(work / "report")], cwd=ROOT,
                         capture_output=True, text=True)
    report_s = time.monotonic() - t
    t = time.monotonic()
    fnd = subprocess.run([PY, str(ROOT / "sweeps" / "findings.py"), "--tracking-uri", f"sqlite:///{db}",
                          "--name", "bench-rehearsal", "--out", str(work / "findings.md")], cwd=ROOT,
                         capture_output=True, text=True)
    findings_s = time.monotonic() - t

    d1, d2 = driver_line(first["lines"]), driver_line(second["lines"]) if second else {}
    rate1 = first["logged"] / first["wall_s"] if first["wall_s"] else 0.0
    print()
    print(f"networks: {n:,}; runs in MLflow: {len(keys):,}; distinct trial keys: {len(set(keys)):,} "
          f"({'each network exactly once' if len(keys) == len(set(keys)) == n else 'MISMATCH'})")
    print(f"wall: {total_s:,.0f} s in all ({total_s / 60:.1f} min; target {TARGET_S / 60:.0f} min: "
          f"{total_s / TARGET_S:.2f}x the target)")
    print(f"rate: {rate1:.2f} networks/s logged by the first run, {n / total_s:.2f} networks/s overall "
          f"(target {n / TARGET_S:.1f}/s for this plan in 30 min; 13/s for the mnist preset)")
    for name, d in (("first run", d1), ("resumed run", d2)):
        if d:
            total = d["cpu"] + d["proc_cpu"]              # the driver process and its logging processes
            print(f"driver CPU, {name} (at its last report): {total:.0f} s over {d['wall']:.0f} s wall = "
                  f"Tune and the rest {d['tune'] / total:.0%} (driver process) + MLflow logging "
                  f"{(d['mlflow'] + d['proc_cpu'] - d['proc_figures']) / total:.0%} ({d['n_proc']:.0f} logging "
                  f"processes: {d['proc_cpu'] / total:.0%}) + figures {(d['figures'] + d['proc_figures']) / total:.0%}; "
                  f"driver peak memory {d['peak_mb']:.0f} MB")
    print(f"sizes: Tune state {mb(sizes['tune'])}, MLflow db {mb(sizes['db'])}, artifacts {mb(sizes['artifacts'])} "
          f"({sizes['artifacts'] / max(len(keys), 1) / 1024:.1f} KB per run)")
    if second and second["first_progress_s"] is not None:
        print(f"resume: restored and reporting {second['first_progress_s']:.0f} s after the driver started")
    print(f"report.py: {report_s:.0f} s (exit {rep.returncode}); findings.py: {findings_s:.0f} s (exit {fnd.returncode})")
    if rep.returncode or fnd.returncode:
        print(rep.stdout[-2000:] + rep.stderr[-2000:] + fnd.stdout[-2000:] + fnd.stderr[-2000:])
    ok = len(keys) == len(set(keys)) == n and not rep.returncode and not fnd.returncode
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
