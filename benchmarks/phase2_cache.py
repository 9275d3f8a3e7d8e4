"""Phase 2 of two-phase training alone, one LeNet-5 on one thread: whole network vs cached features.

    .venv/bin/python benchmarks/phase2_cache.py [--data-dir ../shared/data] [--iterations 10000]

Both fine-tune fc2 of the same network on the same MNIST step subset (rho 1000, mu 0.5) with the same
batches; prints both times (the cached one includes computing the test-set features, which a pack
reuses from phase 1), their ratio and the largest difference of the test scores.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch

import imbalance_core.trial as T
from imbalance_core import frozen
from imbalance_core import methods as M
from imbalance_core.imbalance import make_subset
from imbalance_core.models import build_model
from imbalance_core.sampling import SamplingPlan
from imbalance_core.train import schedule_for


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--iterations", type=int, default=10_000)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)                                   # as a sweep trial on CPU
    ds, train_data, test_data = T.load_prepared("mnist", a.data_dir)
    labels = np.asarray(ds.train_y)
    sub = make_subset(labels, "mnist", "step", 5000, 1000, 0.5, seed=0)
    schedule, cpu = schedule_for("mnist", a.iterations), torch.device("cpu")

    def plan():
        return SamplingPlan(sub, labels, sampler="baseline", seed=0, stream_id=2)

    pack = T.Pack(ds, train_data, test_data, "tensor", schedule, cpu, stack=1)
    lr_scale = M.get("two-phase-ros").phases[1].lr_scale           # STUDY.md: phase 2 at lr x 0.1
    t0 = time.perf_counter()
    nets, _, _ = T.fit(pack, [build_model("lenet5", 10, seed=0)], [plan()], lr_scale=lr_scale, only_last=True)
    whole_scores, _ = T.score(pack, nets)
    whole = time.perf_counter() - t0
    t0 = time.perf_counter()
    cache = frozen.FeatureCache([build_model("lenet5", 10, seed=0)], [plan()], train_data, test_data,
                                schedule.batch_size, schedule.iterations, cpu)
    nets, _, _ = T.fit(pack, cache.heads, [plan()], lr_scale=lr_scale, source=cache)
    cached_scores, _ = T.score(pack, nets, source=cache)
    cached = time.perf_counter() - t0
    print(f"phase 2, {a.iterations} iterations, subset {len(sub.indices)} images, 1 thread, "
          f"torch {torch.__version__}: whole network {whole:.1f} s, cached features {cached:.1f} s "
          f"-> {whole / cached:.1f}x; max |score difference| {np.abs(whole_scores - cached_scores).max():.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
