"""Tune's trial generation for a sweep's packs: driver CPU to create N trials (nothing runs), for
`tune.grid_search(packs)` (deep-copies the whole search space, every pack included, per trial) and the
sweep's `full_grid.Packs` searcher (one suggestion per trial).

    .venv/bin/python benchmarks/tune_trial_generation.py [N ...]      # default: 450 900 (grid), 4500 (Packs)

Prints per N: trials, CPU seconds, ms per trial, and Packs/grid as a ratio. Results: benchmarks/results/
tune_trial_generation.txt.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def generate(how: str, packs: list) -> float:
    from ray import tune
    from ray.tune.experiment import Experiment
    from ray.tune.search import SearchGenerator
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from sweeps.full_grid import Packs

    def trainable(config):
        pass
    if how == "grid":
        exp, gen = Experiment("x", trainable, config={"pack": tune.grid_search(packs)}), BasicVariantGenerator()
    else:
        exp, gen = Experiment("x", trainable, config={}, num_samples=len(packs)), SearchGenerator(Packs(packs))
    t0 = time.process_time()
    gen.add_configurations([exp])
    trials = []
    while (t := gen.next_trial()) is not None:
        trials.append(t)
    cpu = time.process_time() - t0
    assert [t.config["pack"] for t in trials] == packs, how          # one trial per pack, in plan order
    return cpu


def main(argv: list[str]) -> int:
    from sweeps.plan import parse_options, plan_sweep
    plan = plan_sweep(parse_options(["--preset", "mnist", "--rehearse", "--data-dir", str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                                       "--storage-path", "/tmp/tune-trial-generation"]))
    packs = [[dataclasses.asdict(c) for c in p] for p in plan.packs]
    sizes = [int(a) for a in argv] or [450, 900]
    for n in sizes:
        g, p = generate("grid", packs[:n]), generate("packs", packs[:n])
        print(f"{n:5d} packs: grid_search {g:6.1f} s of CPU ({1000 * g / n:6.1f} ms per trial); Packs {p:5.1f} s "
              f"({1000 * p / n:4.1f} ms per trial); Packs/grid {p / g:.3f}x", flush=True)
    if not argv:
        p = generate("packs", packs)
        print(f"{len(packs):5d} packs (the mnist preset): Packs {p:5.1f} s ({1000 * p / len(packs):4.1f} ms per trial)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
