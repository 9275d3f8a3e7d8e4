"""Training throughput of one MNIST LeNet-5 trial vs a plain PyTorch loop, measured in the same run.

    .venv/bin/python benchmarks/trial_speed.py [--data-dir ../shared/data] [--iterations 1000] [--repeats 2]

The plain loop: torch DataLoader (shuffle, batch 64) over the same uint8 tensors of the same subset,
the same LeNet-5, SGD and lr policy. The trial: imbalance_core.trial.run_trial (tensor loader).
Prints images/s of each and the ratio trial / plain (best of --repeats, to damp machine noise).
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
import torch.nn.functional as F

from imbalance_core.datasets import load_dataset
from imbalance_core.imbalance import make_subset
from imbalance_core.models import build_model
from imbalance_core.specs import DATASETS
from imbalance_core.trial import TrialConfig, run_trial


def plain_loop(x: torch.Tensor, y: torch.Tensor, iterations: int, seed: int = 0) -> float:
    """The baseline everyone writes first: DataLoader + module + SGD. Returns images/s."""
    s = DATASETS["mnist"].schedule
    ds = torch.utils.data.TensorDataset(x, y)
    g = torch.Generator().manual_seed(seed)
    dl = torch.utils.data.DataLoader(ds, batch_size=s.batch_size, shuffle=True, drop_last=True, generator=g)
    model = build_model("lenet5", 10, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=s.base_lr, momentum=s.momentum, weight_decay=s.weight_decay)
    t, t0 = 0, time.perf_counter()
    while t < iterations:
        for xb, yb in dl:
            for grp in opt.param_groups:
                grp["lr"] = s.lr(t)
            loss = F.cross_entropy(model(xb.float() / 256.0), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t += 1
            if t >= iterations:
                break
    return iterations * s.batch_size / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args(argv)
    ds = load_dataset("mnist", a.data_dir)
    sub = make_subset(ds.train_y, "mnist", "balanced", 5000, 1, 0.5, seed=0)
    x = torch.from_numpy(ds.train_x[sub.indices])
    y = torch.from_numpy(ds.train_y[sub.indices].astype(np.int64))
    cfg = TrialConfig(dataset="mnist", data_dir=a.data_dir, imbalance="balanced", method="baseline",
                      iterations=a.iterations, device="cpu")
    run_trial(TrialConfig(**{**cfg.__dict__, "iterations": 20}))  # load + warm caches
    plain, trial = [], []
    for _ in range(a.repeats):
        plain.append(plain_loop(x, y, a.iterations))
        trial.append(run_trial(cfg)["images_per_second"])
    print(f"hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"MNIST LeNet-5, batch 64, {a.iterations} iterations, best of {a.repeats}")
    print(f"{'plain DataLoader loop':28s} {max(plain):9.0f} images/s")
    print(f"{'imbalance_core trial':28s} {max(trial):9.0f} images/s")
    print(f"ratio trial / plain: {max(trial) / max(plain):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
