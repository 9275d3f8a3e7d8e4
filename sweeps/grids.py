"""The study's grids, as data: presets and CLI overrides (packing networks into Tune trials: `sweeps.packs`).

A `Grid` is a dataset and a few `Block`s; a block is a cross product (every combination of its
lists is one network, i.e. one `imbalance_core.trial.TrialConfig`). Nothing here trains or
imports Ray/MLflow.

Choices made where STUDY.md is silent (documented here and in the README):
  * linear imbalance has no mu axis (`Block.mu = ()`): its networks carry TrialConfig's default
    mu = 0.5, which the linear profile ignores; the run name and cell show it as `mu0.5`.
  * partial sampling (MNIST, rho = 1000, step, mu = 0.5): levels {2, 10, 50, 100, 500}, where the
    level is the imbalance ratio left after sampling (1 would be full ROS/RUS, 1000 the baseline,
    both already in the main grid). A level must lie strictly between 1 and the cell's rho;
    other combinations (e.g. after `--rho 10`) are skipped. Every method that `needs_level`
    (imbalance_core/methods.py), whatever its name, is swept over its block's levels; the others get None.
  * repetitions are seeds 0..N-1.

Overrides (from the CLI):
  datasets        run the preset's blocks on these datasets instead (cross product)
  methods         keep only these methods (must be in the preset: a filter)
  imbalance       keep only blocks of these imbalance types (must be in the preset: a filter)
  rho, mu, levels, lrs
                  replace that axis in every block that has it (mu: not in linear blocks;
                  levels: only in blocks that have levels)
  repetitions     seeds 0..N-1 in every block
  iterations, data_dir, device, loader, batch_size, n_per_class
                  set on every network
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from imbalance_core.specs import DATASETS           # the registry itself (a dataset added to it is known)
from imbalance_core.imbalance import PROFILES
from imbalance_core import methods as M
from imbalance_core.train import CIFAR10_BASE_LRS
from imbalance_core.trial import TrialConfig, validate

PAPER_METHODS = M.names("paper")              # the five training regimes of the paper
PARTIAL_METHODS = M.names("partial")
BEYOND_METHODS = M.names("beyond")
MNIST_RHOS = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
MNIST_MUS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PARTIAL_LEVELS = (2, 10, 50, 100, 500)
CIFAR10_RHOS = (2, 10, 20, 50)
CIFAR10_MUS = (0.2, 0.5, 0.8)


@dataclass(frozen=True)
class Block:
    """A cross product of the grid: imbalance x rho x mu x lr x seed x method x level."""
    imbalance: str
    rho: tuple[float, ...]
    mu: tuple[float, ...] = ()                 # () = no mu axis (linear): TrialConfig's default mu
    methods: tuple[str, ...] = PAPER_METHODS
    levels: tuple[float | None, ...] = (None,)  # methods that need a level only: imbalance ratio left after sampling
    repetitions: int = 1                       # seeds 0..repetitions-1
    lrs: tuple[float | None, ...] = (None,)    # None: the dataset's paper lr


@dataclass(frozen=True)
class Grid:
    name: str
    dataset: str
    blocks: tuple[Block, ...]
    iterations: int | None = None              # None: the paper's count for the dataset
    description: str = ""


@dataclass(frozen=True)
class Overrides:
    """CLI overrides of a grid; None leaves the preset's value. See the module docstring."""
    datasets: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    imbalance: tuple[str, ...] | None = None
    rho: tuple[float, ...] | None = None
    mu: tuple[float, ...] | None = None
    levels: tuple[float, ...] | None = None
    lrs: tuple[float, ...] | None = None
    repetitions: int | None = None
    iterations: int | None = None
    data_dir: str | None = None
    device: str | None = None
    loader: str | None = None
    batch_size: int | None = None
    n_per_class: int | None = None


PRESETS: dict[str, Grid] = {g.name: g for g in (
    Grid("mnist", "mnist", (
        Block("step", MNIST_RHOS, MNIST_MUS, repetitions=50),
        Block("linear", MNIST_RHOS, repetitions=50),
        Block("step", (1000,), (0.5,), PARTIAL_METHODS, PARTIAL_LEVELS, repetitions=50),
    ), description="Buda et al. MNIST: 90 cells x 5 methods x 50 runs = 22,500 networks, "
                   "plus partial ROS/RUS at rho 1000 (2 x 5 levels x 50 runs = 500)"),
    Grid("cifar10", "cifar10", (
        Block("step", CIFAR10_RHOS, CIFAR10_MUS, repetitions=2, lrs=CIFAR10_BASE_LRS),
        Block("linear", CIFAR10_RHOS, repetitions=2, lrs=CIFAR10_BASE_LRS),
    ), description="Buda et al. CIFAR-10: 16 cells x 5 methods x 4 base lrs x 2 runs = 640 networks"),
    Grid("imagenet", "imagenet", (
        Block("step", (10,), (0.1,), repetitions=1),
        Block("step", (50,), (0.8,), repetitions=1),
        Block("step", (100,), (0.9,), repetitions=3),
    ), description="Buda et al. ImageNet (step only): 3 cells x 5 methods, 1/1/3 runs = 25 networks"),
    Grid("mnist-reproduction", "mnist", (
        Block("balanced", (1,), methods=("baseline",), repetitions=3),
        Block("step", (10, 100, 1000, 5000), (0.1, 0.5, 0.9), repetitions=3),
        Block("linear", (10, 100, 1000, 5000), repetitions=3),
        Block("step", (1000,), (0.5,), PARTIAL_METHODS, (2, 10, 100), repetitions=3),
    ), iterations=600,
        description="the project's published MNIST reproduction (docs/results/mnist): balanced + 12 step + 4 linear "
                    "cells x 5 methods x 3 runs, partial ROS/RUS at rho 1000 (levels 2, 10, 100), 600 iterations "
                    "(the paper: 10,000; --iterations 10000 runs the paper's budget)"),
    Grid("mnist-paper", "mnist", (
        Block("step", (1000,), (0.5,), repetitions=6),
        Block("step", (1000,), (0.5,), PARTIAL_METHODS, (10, 100), repetitions=6),
        Block("balanced", (1,), methods=("baseline",), repetitions=6),
        Block("step", MNIST_RHOS, (0.5,), repetitions=6),
        Block("step", (1000,), (0.9,), repetitions=6),
        Block("linear", (1000,), repetitions=6),
        Block("linear", (10, 100, 5000), repetitions=6),
    ), iterations=None,
        description="MNIST at the paper's length (10,000 iterations per phase), 6 repetitions (seeds 0-5, paired "
                    "across methods): step mu 0.5 at all 9 rho of the paper; the balanced set; step mu 0.9 and "
                    "linear at rho 1000; linear at rho 10, 100, 5000; the five training regimes (+ thresholded "
                    "metrics); partial ROS/RUS at rho 1000, levels 10 and 100 (rho 1000 mu 0.5 first)"),
    Grid("beyond", "mnist", (
        Block("step", (1000,), (0.5,), PAPER_METHODS + BEYOND_METHODS, repetitions=3),
        Block("exponential", (100,), methods=PAPER_METHODS + BEYOND_METHODS, repetitions=3),
    ), iterations=None,
        description="the paper's methods beside the ones that followed it (LA loss, CB focal, LDAM-DRW, cRT) on MNIST "
                    "at the paper's length: step rho 1000 mu 0.5 and exponential (long-tailed) rho 100, 3 "
                    "repetitions; every network also gets the post-hoc metrics (logit adjustment, tau-norm)"),
    Grid("quick", "mnist-sample", (
        Block("step", (10, 100), (0.5,), repetitions=2),
        Block("linear", (10,), repetitions=2),
    ), iterations=300,
        description="smoke run on the bundled 5,000 MNIST digits: 3 cells x 5 methods x 2 seeds = 30 networks, "
                    "300 iterations"),
)}


def cell_of(config: TrialConfig) -> str:
    """The grid cell of a network (the contract's `cell` tag)."""
    return f"{config.dataset}/{config.imbalance}/rho{config.rho:g}/mu{config.mu:g}"


def _require_known(kind: str, values, allowed) -> None:
    for v in values:
        if v not in allowed:
            raise ValueError(f"{kind} {v!r} is unknown; choose one of {', '.join(map(str, allowed))}")


def _require_in_grid(kind: str, values, present, grid: Grid) -> None:
    for v in values:
        if v not in present:
            raise ValueError(f"{kind} {v!r} is not in preset {grid.name!r} (it has {', '.join(map(str, present))}); "
                             f"--{kind} only narrows a preset")


def _apply(block: Block, o: Overrides) -> Block | None:
    methods = block.methods if o.methods is None else tuple(m for m in block.methods if m in o.methods)
    if not methods or (o.imbalance is not None and block.imbalance not in o.imbalance):
        return None
    return dataclasses.replace(
        block, methods=methods,
        rho=block.rho if o.rho is None or block.imbalance == "balanced" else o.rho,   # balanced: no rho axis
        mu=block.mu if o.mu is None or not block.mu else o.mu,
        levels=block.levels if o.levels is None or block.levels == (None,) else o.levels,
        lrs=block.lrs if o.lrs is None else o.lrs,
        repetitions=block.repetitions if o.repetitions is None else o.repetitions)


def _block_configs(block: Block, dataset: str, base: dict) -> list[TrialConfig]:
    leveled = {m: M.get(m).needs_level for m in block.methods}     # swept over levels, whatever its name
    out = []
    for rho in block.rho:
        for mu in block.mu or (None,):
            for lr in block.lrs:
                for seed in range(block.repetitions):
                    for method in block.methods:
                        for level in block.levels if leveled[method] else (None,):
                            if leveled[method] and level is not None and not 1 < level < rho:
                                continue        # level >= rho is the baseline, 1 full ROS/RUS: not "partial"
                            kw = dict(base, dataset=dataset, imbalance=block.imbalance, rho=float(rho),
                                      method=method, level=None if level is None else float(level),
                                      seed=seed, lr=None if lr is None else float(lr))
                            if mu is not None:
                                kw["mu"] = float(mu)
                            out.append(TrialConfig(**kw))
    return out


def expand(grid: Grid, overrides: Overrides | None = None) -> list[TrialConfig]:
    """Every network of `grid` under `overrides`, in grid order, without duplicates, all validated.

    Raises ValueError naming the first bad value (unknown dataset/method/imbalance, rho/mu/level out
    of range, ...) before anything runs.
    """
    o = overrides or Overrides()
    if o.datasets is not None:
        _require_known("dataset", o.datasets, DATASETS)
    if o.methods is not None:
        for m in o.methods:
            M.get(m)                                      # names an unknown method or a bad hyper-parameter
        _require_in_grid("methods", o.methods, sorted({m for b in grid.blocks for m in b.methods},
                                                      key=lambda m: (M.ORDER.index(M.get(m).base), m)), grid)
    if o.imbalance is not None:
        _require_known("imbalance", o.imbalance, PROFILES)
        _require_in_grid("imbalance", o.imbalance, list(dict.fromkeys(b.imbalance for b in grid.blocks)), grid)
    if o.repetitions is not None and o.repetitions < 1:
        raise ValueError(f"repetitions={o.repetitions!r} is not allowed: need an integer >= 1")
    base = {"iterations": grid.iterations if o.iterations is None else o.iterations}
    for name in ("data_dir", "device", "loader", "batch_size", "n_per_class"):
        if getattr(o, name) is not None:
            base[name] = getattr(o, name)
    configs: dict[TrialConfig, None] = {}
    for dataset in o.datasets or (grid.dataset,):
        for block in grid.blocks:
            b = _apply(block, o)
            if b is not None:
                configs.update(dict.fromkeys(_block_configs(b, dataset, base)))
    if not configs:
        raise ValueError(f"preset {grid.name!r} has no networks left after the overrides")
    for c in configs:
        try:
            validate(c, here=False)            # the device is resolved on the worker that trains it
        except ValueError as e:
            raise ValueError(f"{e} (network {describe(c)})") from None
    return list(configs)


def describe(c: TrialConfig) -> str:
    """A short human label of a network (also the MLflow run name)."""
    s = f"{c.dataset}-{c.imbalance}-rho{c.rho:g}-mu{c.mu:g}-{c.method}"
    if c.level is not None:
        s += f"-L{c.level:g}"
    if c.lr is not None:
        s += f"-lr{c.lr:g}"
    return f"{s}-s{c.seed}"
