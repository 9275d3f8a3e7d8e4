"""Reading what MLflow holds of a sweep (trial_key, run id, status of every run), as a resumed driver does before
it logs anything: MLflow's search_runs (every run whole: ~106 metrics, ~25 params, tags) vs one query of the
store's tables (`Tracker.index_runs`), on the same store, in the same run.

    .venv/bin/python benchmarks/index_read.py --db /path/mlflow.db --name SWEEP   # an existing store
    .venv/bin/python benchmarks/index_read.py [--runs 1000]                    # a fresh one, synthetic runs

Prints each read's wall and CPU time, per run, and the ratio; checks that both read the same index.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn):
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", help="an existing sqlite store (e.g. a rehearsal's mlflow.db); default: a fresh one")
    p.add_argument("--name", help="the experiment (sweep name) in --db")
    p.add_argument("--runs", type=int, default=1000, help="synthetic runs of a fresh store (default 1000)")
    a = p.parse_args(argv)
    from unittest import mock

    from sweeps.tracking import Tracker
    if a.db:
        if not a.name or not Path(a.db).is_file():
            p.error(f"--db {a.db!r} must be an existing sqlite file, with --name its experiment")
        tracker = Tracker(f"sqlite:///{Path(a.db).resolve()}", a.name)
    else:
        from sweeps import grids
        from sweeps.rehearsal import synthetic_result
        folder = tempfile.mkdtemp(prefix="index-read-")
        tracker = Tracker(f"sqlite:///{folder}/mlflow.db", "bench", rehearsal=True)
        tracker.index_runs()
        configs = grids.expand(grids.PRESETS["mnist"], grids.Overrides(data_dir=str(ROOT.parent / "shared" / "data")))
        for i, c in enumerate(configs[:a.runs]):
            tracker.log_network(c, synthetic_result(c, 0.0), f"p{i // 5}")
    fast, fast_wall, fast_cpu = timed(tracker.index_runs)
    with mock.patch("sweeps.compat.sql_store", lambda client: None):
        slow, slow_wall, slow_cpu = timed(tracker.index_runs)       # search_runs, as from a tracking server
    n = sum(len(v) for v in fast.values())
    same = {k: sorted(v) for k, v in fast.items()} == {k: sorted(v) for k, v in slow.items()}
    print(f"store {tracker.uri}, experiment {tracker.sweep}: {n:,} runs with a trial_key; same index: {same}")
    print(f"search_runs:         wall {slow_wall:7.2f} s, CPU {slow_cpu:7.2f} s ({1000 * slow_cpu / max(n, 1):.2f} ms per run)")
    print(f"the store's tables:  wall {fast_wall:7.2f} s, CPU {fast_cpu:7.2f} s ({1000 * fast_cpu / max(n, 1):.3f} ms per run)")
    print(f"ratio (tables / search_runs): wall {fast_wall / slow_wall:.4f}x, CPU {fast_cpu / slow_cpu:.4f}x")
    if not a.db:                                 # the fresh store was ours: leave nothing behind
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
