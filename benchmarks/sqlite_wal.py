"""Two logging processes into one embedded (sqlite) MLflow store, as the sweep driver runs them: networks
logged per second and CPU per network, in SQLite's default rollback-journal mode vs write-ahead log (WAL).

    .venv/bin/python benchmarks/sqlite_wal.py [--networks 150] [--rounds 2] [--data-dir ../shared/data]

Each process logs its own `--networks` synthetic networks of the mnist preset (`Tracker.log_network`, the
PNGs drawn there) into a fresh store; the modes alternate over rounds (these machines are noisy) and the
WAL figures are printed as ratios to the rollback-journal ones of the same run.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _log(uri: str, configs, mode: str, q) -> None:
    import sweeps.tracking as tracking
    from sweeps.rehearsal import synthetic_result
    from sweeps.tracking import Tracker
    if mode == "rollback":                         # what Tracker did before it set WAL (use_wal)
        tracking.use_wal = lambda uri: None
    results = [synthetic_result(c, 0.0) for c in configs]
    tracker = Tracker(uri, "bench", rehearsal=True)
    tracker.index_runs()
    c0, t0 = time.process_time(), time.perf_counter()
    for i, (c, r) in enumerate(zip(configs, results)):
        tracker.log_network(c, r, f"p{i // 5}")
    q.put((time.process_time() - c0, t0, time.perf_counter()))


def one(mode: str, configs: list, n: int) -> tuple[float, float]:
    """(networks/s, CPU ms per network) of 2 processes logging n networks each into a fresh store."""
    folder = tempfile.mkdtemp(prefix="wal-")
    uri = f"sqlite:///{folder}/mlflow.db"
    import sweeps.tracking as tracking
    saved = tracking.use_wal
    if mode == "rollback":
        tracking.use_wal = lambda uri: None
    tracking.Tracker(uri, "bench", rehearsal=True)  # the store and its experiment, before the two writers
    tracking.use_wal = saved
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_log, args=(uri, configs[k * n:(k + 1) * n], mode, q)) for k in range(2)]
    for p in procs:
        p.start()
    outs = [q.get() for _ in procs]
    for p in procs:
        p.join()
    with sqlite3.connect(f"{folder}/mlflow.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == {"rollback": "delete", "wal": "wal"}[mode]
    wall = max(o[2] for o in outs) - min(o[1] for o in outs)
    return 2 * n / wall, 1000 * sum(o[0] for o in outs) / (2 * n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--networks", type=int, default=150, help="per process")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data-dir", default=str((ROOT / ".." / "shared" / "data").resolve()))
    a = ap.parse_args(argv)
    from sweeps import grids
    configs = grids.expand(grids.PRESETS["mnist"], grids.Overrides(data_dir=a.data_dir))[:2 * a.networks]
    got: dict[str, list[tuple[float, float]]] = {"rollback": [], "wal": []}
    for r in range(a.rounds):
        for mode in got:
            got[mode].append(one(mode, configs, a.networks))
            print(f"round {r + 1} {mode}: {got[mode][-1][0]:.1f} networks/s, CPU {got[mode][-1][1]:.1f} ms/network",
                  flush=True)
    rate = {m: statistics.fmean(x[0] for x in v) for m, v in got.items()}
    cpu = {m: statistics.fmean(x[1] for x in v) for m, v in got.items()}
    print(f"2 processes x {a.networks} networks, {a.rounds} rounds: rollback journal {rate['rollback']:.1f} networks/s "
          f"({cpu['rollback']:.0f} ms CPU each), WAL {rate['wal']:.1f}/s ({cpu['wal']:.0f} ms): rate "
          f"{rate['wal'] / rate['rollback']:.2f}x, CPU per network {cpu['wal'] / cpu['rollback']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
