"""Do the networks still come out bit-identical? Retrain short networks of every training path and compare
every metric (and a digest of every scored network's weights) with a reference recorded earlier.

    .venv/bin/python benchmarks/reproduce_published.py record  [--json PATH]      # before a change
    .venv/bin/python benchmarks/reproduce_published.py compare [--json PATH] [--out TXT]   # after it: OK/DIFF
    .venv/bin/python benchmarks/reproduce_published.py published [--data-dir DIR] [--out TXT]

record/compare train these packs (one CPU thread; one pack each, as run_trials trains a sweep's pack):
  sample-pack     mnist-sample, step rho 10 mu 0.5, seed 0, 300 iterations: the paper's five regimes (baseline,
                  ros, rus, two-phase-ros, two-phase-rus), partial ROS/RUS at level 3, and la-loss, cb-focal,
                  ldam-drw, cRT (phase 2 on cached features: the CPU default)
  sample-stacked  the same pack at 60 iterations, vmap-stacked (the CUDA default; cosine heads in their own group)
  sample-whole    ros, two-phase-ros, two-phase-rus, crt at 60 iterations, phase 2 fine-tuning the whole network
  sample-resumed  sample-pack at 60 iterations cut after 3 steps and resumed from its checkpoint (done=, phase1=)
  mnist-pack      MNIST (--data-dir), step rho 1000 mu 0.5, seed 1, 300 iterations: the five regimes and
                  partial ROS at level 10
Every metric of every network is compared exactly (timing fields left out: train_seconds, images_per_second,
pack_seconds, started_at, ended_at), and so are the sha256 digests of the weights of every network that
`imbalance_core.trial.score` scored (phase-1 networks, phase-2 networks or their heads, in the order scored)
and of every phase-1 state that on_progress handed out.

published: retrains, at the paper's length (10,000 iterations per phase, ~3 min of CPU each), one network of
each paper method from docs/results/mnist-paper/networks.csv (step rho 1000 mu 0.5 seed 0; partial levels 10),
as one pack of that cell and seed, and compares every published metric with the retrained one.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

import imbalance_core.trial as T
from imbalance_core.trial import TrialConfig, run_trials

TIMING = {"train_seconds", "images_per_second", "pack_seconds", "started_at", "ended_at"}
PAPER = ("baseline", "ros", "rus", "two-phase-ros", "two-phase-rus")
BEYOND = ("la-loss", "cb-focal", "ldam-drw", "crt")
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "reproduce_published.json"
DEFAULT_TXT = ROOT / "benchmarks" / "results" / "reproduce_published.txt"
PUBLISHED_CSV = ROOT / "docs" / "results" / "mnist-paper" / "networks.csv"


def state_digest(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)}\0".encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


def sample(method: str, iterations: int, **kw) -> TrialConfig:
    base = dict(dataset="mnist-sample", imbalance="step", rho=10.0, mu=0.5, seed=0, iterations=iterations,
                device="cpu")
    return TrialConfig(**{**base, **kw, "method": method})


def sample_pack(iterations: int) -> list[TrialConfig]:
    return ([sample(m, iterations) for m in PAPER] + [sample("partial-ros", iterations, level=3.0),
                                                        sample("partial-rus", iterations, level=3.0)]
            + [sample(m, iterations) for m in BEYOND])


def cases(data_dir: str) -> dict[str, tuple[list[TrialConfig], dict]]:
    """name -> (configs, run_trials keyword arguments; "cut": resume after that many on_progress steps)."""
    mnist = dict(dataset="mnist", data_dir=data_dir, imbalance="step", rho=1000.0, mu=0.5, seed=1, iterations=300,
                 device="cpu")
    return {
        "sample-pack": (sample_pack(300), {}),
        "sample-stacked": (sample_pack(60), {"stack": True}),
        "sample-whole": ([sample(m, 60) for m in ("ros", "two-phase-ros", "two-phase-rus", "crt")],
                         {"cache_features": False}),
        "sample-resumed": (sample_pack(60), {"cut": 3}),
        "mnist-pack": ([TrialConfig(**mnist, method=m) for m in PAPER]
                       + [TrialConfig(**{**mnist, "level": 10.0}, method="partial-ros")], {}),
    }


def run_case(configs: list[TrialConfig], kw: dict) -> dict:
    """Train one pack; every untimed metric, the digests of the scored networks and of the phase-1 states."""
    scored: list[str] = []
    phase1: dict[str, str] = {}
    real_score = T.score

    def spy(pack, nets, *a, **k):
        scored.extend(state_digest(s) for s in nets.state_dicts())
        return real_score(pack, nets, *a, **k)

    def progress(finished, states):
        phase1.update({k: state_digest(s["state_dict"]) for k, s in states.items()})

    kw = dict(kw)
    cut = kw.pop("cut", None)
    T.score = spy
    try:
        if cut is None:
            results = run_trials(configs, on_progress=progress, **kw)
        else:
            steps = []
            run_trials(configs, on_progress=lambda fin, st: steps.append((fin, st)), **kw)
            done = {i: r for fin, _ in steps[:cut] for i, r in fin.items()}
            saved = {k: s for _, st in steps[:cut] for k, s in st.items()}
            scored.clear()
            results = run_trials(configs, done=done, phase1=saved, on_progress=progress, **kw)
    finally:
        T.score = real_score
    return {"configs": [dataclasses.asdict(c) for c in configs],
            "results": [{k: v for k, v in r.to_dict().items() if k not in TIMING} for r in results],
            "scored_weights": scored, "phase1_states": dict(sorted(phase1.items()))}


def git_version() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "imbalance_core"], cwd=ROOT, capture_output=True,
                               text=True).stdout
        return head.strip() + ("+ (imbalance_core modified)" if dirty.strip() else "")
    except OSError:
        return "unknown"


def added_fields(ref: dict, new: dict) -> list[str]:
    """Result fields recorded now that the reference did not have (a new field is not a numeric change)."""
    return sorted({k for a, b in zip(ref["results"], new["results"]) for k in set(b) - set(a)})


def diff_case(ref: dict, new: dict) -> list[str]:
    """Every field of the reference that differs now (or is gone), per network; the weights and phase-1 states."""
    out = []
    for i, (a, b) in enumerate(zip(ref["results"], new["results"])):
        keys = sorted(k for k in a if a[k] != b.get(k, "<missing>"))
        if keys:
            out.append(f"network {i} ({ref['configs'][i]['method']}): {', '.join(keys)}")
    if len(ref["results"]) != len(new["results"]):
        out.append(f"{len(ref['results'])} networks before, {len(new['results'])} now")
    if ref["scored_weights"] != new["scored_weights"]:
        out.append(f"weights of the scored networks differ ({len(ref['scored_weights'])} before, "
                   f"{len(new['scored_weights'])} now)")
    if ref["phase1_states"] != new["phase1_states"]:
        out.append("phase-1 states handed to on_progress differ")
    return out


def record_or_compare(mode: str, data_dir: str, json_path: Path, out: Path | None, only: list[str] | None) -> int:
    torch.set_num_threads(1)                                   # as a sweep trial on CPU
    ref = json.loads(json_path.read_text()) if mode == "compare" else {}
    got, lines, bad = {}, [], 0
    for name, (configs, kw) in cases(data_dir).items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        got[name] = run_case(configs, kw)
        n = len(configs)
        took = time.perf_counter() - t0
        if mode == "record":
            lines.append(f"{name:15s} recorded {n} networks, {len(got[name]['scored_weights'])} scored weights "
                         f"({took:.0f} s)")
        elif name not in ref:
            lines.append(f"{name:15s} MISSING from {json_path.name}")
            bad += 1
        else:
            d = diff_case(ref[name], got[name])
            bad += bool(d)
            metrics = sum(len(r) for r in got[name]["results"])
            added = added_fields(ref[name], got[name])
            lines.append(f"{name:15s} {'DIFF' if d else 'OK  '} {n} networks, {metrics} result fields, "
                         f"{len(got[name]['scored_weights'])} weight digests, {len(got[name]['phase1_states'])} "
                         f"phase-1 states ({took:.0f} s)" + "".join(f"\n    {x}" for x in d)
                         + (f"\n    fields recorded since the reference (not compared): {', '.join(added)}"
                            if added else ""))
        print(lines[-1], flush=True)
    if mode == "record":
        json_path.write_text(json.dumps({**ref, **got}, indent=1, sort_keys=True))
        print(f"wrote {json_path}")
        return 0
    text = "\n".join([
        "# .venv/bin/python benchmarks/reproduce_published.py compare",
        f"# reference: {ref.get('_meta', {}).get('version', '?')} ({json_path.name}); now: {git_version()}; "
        f"torch {torch.__version__}, 1 thread; {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC",
        *lines, f"{'OK: every metric and weight digest is identical' if not bad else f'DIFF in {bad} case(s)'}", ""])
    if out is not None:
        out.write_text(text)
    return 1 if bad else 0


def _published_rows(csv_path: Path) -> list[dict]:
    rows = list(csv.DictReader(csv_path.open()))
    want = [(m, "None") for m in PAPER] + [("partial-ros", "10.0"), ("partial-rus", "10.0")]
    picked = []
    for method, level in want:
        hit = [r for r in rows if (r["params.imbalance"], r["params.rho"], r["params.mu"], r["params.seed"],
                                   r["params.method"], r["params.level"]) == ("step", "1000.0", "0.5", "0", method, level)]
        picked.append(hit[0])
    return picked


def published(data_dir: str, out: Path | None) -> int:
    """Retrain one published network of each paper method at its full length; compare with networks.csv."""
    torch.set_num_threads(1)                                   # the published run: 2 trials at once, 1 thread each
    rows = _published_rows(PUBLISHED_CSV)
    configs = [TrialConfig(dataset="mnist", data_dir=data_dir, imbalance="step", rho=1000.0, mu=0.5, seed=0,
                           method=r["params.method"], level=None if r["params.level"] == "None" else
                           float(r["params.level"])) for r in rows]
    t0 = time.perf_counter()
    results = run_trials(configs)
    took = time.perf_counter() - t0
    lines, bad = [], 0
    for c, r, row in zip(configs, results, rows):
        d = r.to_dict()
        compared, diffs = 0, []
        for col, raw in row.items():
            if not col.startswith("metrics.") or col[8:] in TIMING:
                continue
            name = col[8:]
            value = _metric(d, name)
            if value is None:
                continue
            compared += 1
            if value != float(raw):
                diffs.append(f"{name}: published {float(raw)!r}, now {value!r}")
        bad += bool(diffs)
        label = c.method + (f" L{c.level:g}" if c.level is not None else "")
        lines.append(f"{label:16s} {'DIFF' if diffs else 'OK  '} {compared} published metrics (run "
                     f"{row['tags.mlflow.runName']}, code {row['params.code_version']})"
                     + "".join(f"\n    {x}" for x in diffs[:8]) + (f"\n    ... {len(diffs) - 8} more"
                                                                 if len(diffs) > 8 else ""))
        print(lines[-1], flush=True)
    text = "\n".join([
        "# .venv/bin/python benchmarks/reproduce_published.py published",
        f"# {len(configs)} networks of docs/results/mnist-paper/networks.csv (step rho 1000 mu 0.5 seed 0) retrained at "
        f"10,000 iterations per phase as one pack in {took / 60:.1f} min; code {git_version()}, torch "
        f"{torch.__version__}, 1 thread; {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC",
        *lines, f"{'OK: every published metric reproduced exactly' if not bad else f'DIFF in {bad} network(s)'}", ""])
    if out is not None:
        with out.open("a") as f:
            f.write("\n" + text)
    return 1 if bad else 0


def _metric(d: dict, name: str) -> float | None:
    """A metric as MLflow logged it (sweeps/tracking: lists as name_<class>) from a result dict."""
    if name in d:
        v = d[name]
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    base, _, idx = name.rpartition("_")
    if idx.isdigit() and isinstance(d.get(base), list):
        return float(d[base][int(idx)])
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("record", "compare", "published"))
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="the reference (record writes it)")
    ap.add_argument("--out", type=Path, default=DEFAULT_TXT, help="compare: written; published: appended")
    ap.add_argument("--only", nargs="+", help="record/compare only these cases")
    a = ap.parse_args(argv)
    if a.mode == "published":
        return published(a.data_dir, a.out)
    rc = record_or_compare(a.mode, a.data_dir, a.json, a.out, a.only)
    if a.mode == "record":                                     # the code version the reference was recorded at
        ref = json.loads(a.json.read_text())
        ref["_meta"] = {"version": git_version(), "torch": torch.__version__}
        a.json.write_text(json.dumps(ref, indent=1, sort_keys=True))
    return rc


if __name__ == "__main__":
    sys.exit(main())
