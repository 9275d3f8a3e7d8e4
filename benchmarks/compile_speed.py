"""Does `torch.compile` pay for a LeNet-5 network on these CPUs? Eager vs compiled, same batches, one run.

    .venv/bin/python benchmarks/compile_speed.py [--data-dir ../shared/data] [--iterations 2000] [--repeats 2]

Both ways train the same network (MNIST step rho 1000 mu 0.5, ROS, seed 0: a phase-1 network of a paper pack)
with imbalance_core's own loop (`train.train`, tensor loader, channels_last, the thread count of a Tune trial:
1). The compiled way wraps the module in `torch.compile` once and reuses it for every repeat, as a Tune
worker would reuse it across the packs it runs; its first call's compile time is printed apart. Prints the
steady-state images/s of each, the ratio, the compile time and the paper-length pack time it projects,
and whether the two ways give the same test scores.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from imbalance_core.imbalance import make_subset
from imbalance_core.loaders import TensorLoader, eval_batches
from imbalance_core.models import build_model
from imbalance_core.sampling import SamplingPlan
from imbalance_core.train import StackedNets, predict, schedule_for, train
from imbalance_core.trial import load_prepared


def run(compiled_module, data_dir: str, iterations: int, compile_: bool):
    """Train one network; returns (images/s, test scores, the compiled module to reuse)."""
    ds, tr, te = load_prepared("mnist", data_dir)
    labels = np.asarray(ds.train_y)
    sub = make_subset(labels, "mnist", "step", 5000, 1000, 0.5, seed=0)
    plan = SamplingPlan(sub, labels, "ros", seed=0, stream_id=1)
    sched = schedule_for("mnist", iterations)
    nets = StackedNets([build_model("lenet5", 10, seed=0)], "cpu", channels_last=True)
    if compile_:
        if compiled_module is None:
            compiled_module = torch.compile(nets.module)
        else:               # reuse the compiled graph: load this run's fresh weights into its module
            compiled_module._orig_mod.load_state_dict(nets.module.state_dict())
        nets.params = dict(compiled_module._orig_mod.named_parameters())
        nets.module = compiled_module
    loader = TensorLoader(tr, [plan], sched.batch_size, iterations)
    st = train(nets, loader, sched)
    scores = predict(nets, eval_batches(te, 1000)).numpy()[0]
    return st.images_per_second, scores, compiled_module


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args(argv)
    if a.iterations < 10 or a.repeats < 1:
        raise SystemExit(f"need --iterations >= 10 and --repeats >= 1, got {a.iterations} and {a.repeats}")
    torch.set_num_threads(1)
    run(None, a.data_dir, 10, False)                          # load data, warm caches
    t0 = time.perf_counter()
    _, _, compiled = run(None, a.data_dir, 10, True)          # first call compiles
    compile_s = time.perf_counter() - t0
    eager, comp = [], []
    for _ in range(a.repeats):                                # alternate, so machine noise hits both
        e, se, _ = run(None, a.data_dir, a.iterations, False)
        c, sc, compiled = run(compiled, a.data_dir, a.iterations, True)
        eager.append(e)
        comp.append(c)
    same = np.array_equal(se.argmax(1), sc.argmax(1))
    diff = float(np.abs(se - sc).max())
    ratio = max(comp) / max(eager)
    print(f"hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"1 thread")
    print(f"LeNet-5 MNIST ROS network, batch 64, {a.iterations} iterations, best of {a.repeats} (alternated)")
    print(f"{'eager':10s} {max(eager):8.0f} images/s   (all: {', '.join(f'{v:.0f}' for v in eager)})")
    print(f"{'compiled':10s} {max(comp):8.0f} images/s   (all: {', '.join(f'{v:.0f}' for v in comp)})")
    print(f"ratio compiled / eager: {ratio:.2f}x; compile (first call, 10 iterations included): {compile_s:.1f} s")
    pack = 3 * 10_000 * 64                                    # a paper pack trains 3 full networks
    print(f"paper-length pack (3 x 10,000 iterations): eager {pack / max(eager):.0f} s, compiled "
          f"{pack / max(comp):.0f} s + {compile_s:.0f} s once per worker")
    print(f"same test predictions: {same}; max |score difference| {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
