"""Networks per hour on a fixed slice of the MNIST grid, three ways, measured in the same run.

    .venv/bin/python benchmarks/grid_throughput.py [--data-dir ../shared/data] [--iterations 1000]
        [--repetitions 2] [--rho 10 1000] [--device auto]

The slice: MNIST step imbalance rho {10, 1000} x mu {0.5}, linear rho {10, 1000} (`--rho`), the five training
regimes (baseline, ROS, RUS, two-phase ROS, two-phase RUS), `--repetitions` seeds, at a reduced
`--iterations` (stated in the output). Three ways:
  plain      one network after another: torch DataLoader + module + SGD (benchmarks/plain.py)
  sweep      sweeps/full_grid.py with --pack-size 1 (Ray Tune + MLflow, every overhead counted)
  packed     sweeps/full_grid.py with the automatic pack size (CPU: the methods of a (cell, seed)
             one after another in one trial, two-phase sharing its first phase; CUDA: vmap-stacked)
  core       the packed sweep's packs, trained by imbalance_core.trial.run_trials in this process
             (no Ray, no MLflow): what a GPU machine without Ray/MLflow can measure
`--ways` picks among them (default: plain sweep packed). `--plain-seeds N` times the plain loop on the
first N seeds only (every cell and method, so the same method mix) and rates it per network.
Prints networks/hour and images/s of each, the ratios to `plain`, and the projected wall time of the
paper's full MNIST grid (22,500 networks x 10,000 iterations) at the fastest way's rate on this hardware.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from benchmarks.plain import plain_network
from imbalance_core import packing
from imbalance_core.datasets import load_dataset
from imbalance_core.trial import TrialConfig, resolve_device, run_trials
from sweeps import packs

WAYS = ("plain", "sweep", "packed", "core")

MU = 0.5
METHODS = ["baseline", "ros", "rus", "two-phase-ros", "two-phase-rus"]
PAPER_MNIST_NETWORKS, PAPER_ITERATIONS = 22_500, 10_000


def cells(rhos: list[float]) -> list[tuple[str, float, float]]:
    return [(imb, float(rho), MU) for imb in ("step", "linear") for rho in rhos]


def slice_configs(data_dir: str, iterations: int, repetitions: int, device: str,
                  rhos: list[float]) -> list[TrialConfig]:
    return [TrialConfig(dataset="mnist", data_dir=data_dir, imbalance=imb, rho=rho, mu=mu, method=m, seed=s,
                        iterations=iterations, device=device)
            for imb, rho, mu in cells(rhos) for m in METHODS for s in range(repetitions)]


def images_of(c: TrialConfig) -> int:
    """Training images a network sees (two-phase: both phases)."""
    return c.schedule.iterations * c.schedule.batch_size * (2 if c.method.startswith("two-phase") else 1)


def run_sweep(data_dir, iterations, repetitions, device, rhos, pack_size, workdir, tag) -> float:
    argv = ["--preset", "mnist", "--data-dir", data_dir, "--iterations", str(iterations),
            "--repetitions", str(repetitions), "--rho", *map(str, rhos), "--mu", str(MU),
            "--methods", *METHODS, "--name", f"bench-{tag}", "--device", device,
            "--tracking-uri", f"sqlite:///{workdir}/mlflow-{tag}.db", "--storage-path", f"{workdir}/ray-{tag}"]
    if pack_size is not None:
        argv += ["--pack-size", str(pack_size)]
    if device == "cuda":
        argv += ["--gpus-per-trial", "1"]
    from sweeps import full_grid                          # Ray and MLflow: only for the sweep ways
    t0 = time.perf_counter()
    rc = full_grid.main(argv)
    if rc != 0:
        raise SystemExit(f"sweep {tag} failed with exit status {rc}")
    return time.perf_counter() - t0


def run_core(configs: list[TrialConfig], device: str) -> float:
    """The packs the packed sweep would train (same grouping, automatic size), one after another here."""
    size = packing.auto_pack_size(configs[0].model, configs[0].schedule.batch_size, device)
    t0 = time.perf_counter()
    for p in packs.pack(configs, size):
        run_trials(p)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--repetitions", type=int, default=2)
    ap.add_argument("--rho", type=float, nargs="+", default=[10.0, 1000.0],
                    help="imbalance ratios of the slice's cells (step mu 0.5 and linear, each)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ways", nargs="+", choices=WAYS, default=["plain", "sweep", "packed"])
    ap.add_argument("--plain-seeds", type=int, default=None, help="time the plain loop on this many seeds only")
    a = ap.parse_args(argv)
    if "plain" not in a.ways:
        ap.error("--ways needs plain: every ratio is against it")
    if a.plain_seeds is not None and a.plain_seeds < 1:
        ap.error(f"--plain-seeds {a.plain_seeds} is not allowed: need an integer >= 1 (or leave it out: all seeds)")
    device = resolve_device(a.device).type
    configs = slice_configs(a.data_dir, a.iterations, a.repetitions, device, a.rho)
    n, images = len(configs), sum(images_of(c) for c in configs)
    ds = load_dataset("mnist", a.data_dir)

    plain_cs = [c for c in configs if a.plain_seeds is None or c.seed < a.plain_seeds]
    t0 = time.perf_counter()
    for c in plain_cs:
        plain_network(c, ds, device)
    seconds = {"plain": (time.perf_counter() - t0) * n / len(plain_cs)}    # rated to the whole slice
    with tempfile.TemporaryDirectory() as work:
        if "sweep" in a.ways:
            seconds["sweep"] = run_sweep(a.data_dir, a.iterations, a.repetitions, device, a.rho, 1, work, "unpacked")
        if "packed" in a.ways:
            seconds["packed"] = run_sweep(a.data_dir, a.iterations, a.repetitions, device, a.rho, None, work,
                                          "packed")
    if "core" in a.ways:
        seconds["core"] = run_core(configs, device)

    hw = (torch.cuda.get_device_name(0) if device == "cuda" else f"{platform.machine()} CPU") + \
        f", {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"\nhardware: {hw}")
    print(f"slice: {n} MNIST networks ({len(cells(a.rho))} cells x {len(METHODS)} methods x {a.repetitions} seeds), "
          f"{a.iterations} iterations per phase (the paper: {PAPER_ITERATIONS}), batch 64")
    if len(plain_cs) < n:
        print(f"plain: timed on {len(plain_cs)} of the {n} networks (seeds < {a.plain_seeds}), rated to all {n}")
    print(f"{'way':8s} {'wall s':>8s} {'networks/h':>11s} {'images/s':>10s} {'vs plain':>9s}")
    for name, s in seconds.items():
        print(f"{name:8s} {s:8.1f} {n / s * 3600:11.0f} {images / s:10.0f} {seconds['plain'] / s:8.2f}x")
    # projection: the paper's grid has the same method mix; scale images by 10,000 / iterations
    best = min((w for w in seconds if w != "plain"), key=seconds.get, default="plain")
    per_network_s = seconds[best] / n * (PAPER_ITERATIONS / a.iterations)
    print(f"projected full MNIST grid ({PAPER_MNIST_NETWORKS:,} networks x {PAPER_ITERATIONS:,} iterations) "
          f"at the {best} rate on this hardware: {PAPER_MNIST_NETWORKS * per_network_s / 3600:,.1f} h "
          f"(fixed costs scaled too, so this is an upper bound)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
