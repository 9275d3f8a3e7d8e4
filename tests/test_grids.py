"""sweeps.grids: the paper's grids as data, CLI overrides, packing networks into trials (no Ray, no MLflow)."""
from collections import Counter

import pytest

from imbalance_core.train import CIFAR10_BASE_LRS
from imbalance_core.trial import _check_pack
from sweeps.grids import (MNIST_MUS, MNIST_RHOS, PAPER_METHODS, PARTIAL_LEVELS, PRESETS, Overrides, cell_of,
                          describe, expand)
from sweeps.packs import pack, training_images
from sweeps.tracking import trial_key

DATA = Overrides(data_dir="/data/not/read/by/expand")


@pytest.fixture(scope="module")
def mnist():
    return expand(PRESETS["mnist"], DATA)


def test_mnist_preset_is_the_papers_22500_networks_plus_partial_sampling(mnist):
    main = [c for c in mnist if not c.method.startswith("partial-")]
    assert len(main) == 22_500
    cells = Counter(cell_of(c) for c in main)
    assert len(cells) == 90 and set(cells.values()) == {5 * 50}
    assert Counter(c.imbalance for c in main) == {"step": 81 * 250, "linear": 9 * 250}
    assert {c.rho for c in main} == set(map(float, MNIST_RHOS))
    assert {c.mu for c in main if c.imbalance == "step"} == set(MNIST_MUS)
    assert {c.mu for c in main if c.imbalance == "linear"} == {0.5}      # no mu axis: TrialConfig's default
    assert Counter(c.method for c in main) == {m: 4500 for m in PAPER_METHODS}
    assert {c.seed for c in main} == set(range(50))
    assert all(c.dataset == "mnist" and c.iterations is None and c.lr is None for c in mnist)

    partial = [c for c in mnist if c.method.startswith("partial-")]
    assert len(partial) == 2 * len(PARTIAL_LEVELS) * 50 == 500
    assert {(c.imbalance, c.rho, c.mu) for c in partial} == {("step", 1000.0, 0.5)}
    assert Counter((c.method, c.level) for c in partial) == {(m, float(lv)): 50 for m in ("partial-ros", "partial-rus")
                                                             for lv in PARTIAL_LEVELS}
    assert len(set(mnist)) == len(mnist) == 23_000


def test_cifar10_preset_cells_methods_lrs_runs():
    cs = expand(PRESETS["cifar10"], DATA)
    cells = {cell_of(c) for c in cs}
    assert len(cells) == 4 * 3 + 4                                      # step rho x mu, linear rho
    assert len(cs) == 16 * 5 * len(CIFAR10_BASE_LRS) * 2 == 640
    assert {c.lr for c in cs} == set(CIFAR10_BASE_LRS) and {c.seed for c in cs} == {0, 1}
    assert {c.rho for c in cs} == {2.0, 10.0, 20.0, 50.0}
    assert {c.mu for c in cs if c.imbalance == "step"} == {0.2, 0.5, 0.8}


def test_imagenet_preset_is_the_papers_table():
    cs = expand(PRESETS["imagenet"], DATA)
    runs = Counter((c.mu, c.rho) for c in cs if c.method == "baseline")
    assert runs == {(0.1, 10.0): 1, (0.8, 50.0): 1, (0.9, 100.0): 3}
    assert {c.imbalance for c in cs} == {"step"}
    assert {c.method for c in cs} == set(PAPER_METHODS) and len(cs) == 25


def test_mnist_paper_preset_has_the_cells_the_published_run_needs():
    """Issue 25's grid at the paper's length: step mu 0.5 at all 9 rho of the paper, every other cell of the
    published page, linear at rho 10, 100, 5000; 6 repetitions (seeds 0-5); rho 1000 mu 0.5 first."""
    cs = expand(PRESETS["mnist-paper"], DATA)
    assert all(c.iterations is None and c.schedule.iterations == 10_000 for c in cs)
    cells = Counter((c.imbalance, c.rho, c.mu if c.imbalance == "step" else None, c.method, c.level) for c in cs)
    assert set(cells.values()) == {6}                                    # 6 repetitions everywhere
    assert {c.seed for c in cs} == set(range(6))
    wanted = [("step", rho, .5) for rho in MNIST_RHOS] + [("step", 1000, .9)] + \
        [("linear", rho, None) for rho in (10, 100, 1000, 5000)]
    for imb, rho, mu in wanted:
        assert {m for (i, r, u, m, lv) in cells if (i, r, u, lv) == (imb, rho, mu, None)} == set(PAPER_METHODS)
    assert len({(i, r, u) for (i, r, u, m, lv) in cells}) == len(wanted) + 1      # + the balanced set
    assert {(m, lv) for (i, r, u, m, lv) in cells if lv is not None} == {
        (m, float(lv)) for m in ("partial-ros", "partial-rus") for lv in (10, 100)}
    assert ("balanced", 1.0, None, "baseline", None) in cells
    assert len(cs) == 6 * (len(wanted) * 5 + 1 + 4)
    first = pack(cs, 5)[0]                                               # the cell the note reports runs first
    assert {cell_of(c) for c in first} == {"mnist/step/rho1000/mu0.5"} and {c.seed for c in first} == {0}


def test_quick_preset_is_a_small_real_grid():
    g = PRESETS["quick"]
    cs = expand(g)
    assert len(cs) == 30 and {c.dataset for c in cs} == {"mnist-sample"} and {c.iterations for c in cs} == {300}
    assert {cell_of(c) for c in cs} == {"mnist-sample/step/rho10/mu0.5", "mnist-sample/step/rho100/mu0.5",
                                        "mnist-sample/linear/rho10/mu0.5"}
    packs = pack(cs, 5)                                                  # the CPU pack: a (cell, seed)'s methods
    assert len(packs) == 6 and all(len(p) == 5 for p in packs)
    # the whole quick sweep trains 6 packs x (3 first-phase + 2 fine-tuning networks) x 300 x 64 images
    assert sum(training_images(p) for p in packs) == 6 * 5 * 300 * 64


def test_overrides_narrow_and_set():
    g = PRESETS["mnist"]
    paper = dict(methods=PAPER_METHODS)
    cs = expand(g, Overrides(data_dir="/d", rho=(10, 100), repetitions=2, **paper))
    assert len(cs) == (2 * 9 + 2) * 5 * 2
    assert {c.rho for c in cs} == {10.0, 100.0} and {c.seed for c in cs} == {0, 1}
    cs = expand(g, Overrides(data_dir="/d", imbalance=("linear",), methods=("ros",), repetitions=1))
    assert len(cs) == 9 and {(c.imbalance, c.method) for c in cs} == {("linear", "ros")}
    cs = expand(g, Overrides(data_dir="/d", mu=(0.5,), rho=(50,), repetitions=1, iterations=20, lrs=(0.001, 0.01),
                             device="cpu", loader="torch", **paper))
    assert {cell_of(c) for c in cs} == {"mnist/step/rho50/mu0.5", "mnist/linear/rho50/mu0.5"}
    assert len(cs) == 2 * 5 * 2
    assert {(c.iterations, c.device, c.loader) for c in cs} == {(20, "cpu", "torch")}
    assert {c.lr for c in cs} == {0.001, 0.01}
    # --datasets re-targets the preset's cells
    cs = expand(PRESETS["quick"], Overrides(datasets=("mnist",), data_dir="/d", repetitions=1))
    assert {c.dataset for c in cs} == {"mnist"} and len(cs) == 15


def test_partial_levels_stay_strictly_between_full_sampling_and_baseline():
    cs = expand(PRESETS["mnist"], Overrides(data_dir="/d", methods=("partial-ros",), rho=(100,), repetitions=1))
    assert sorted(c.level for c in cs) == [2.0, 10.0, 50.0]
    cs = expand(PRESETS["mnist"], Overrides(data_dir="/d", methods=("partial-rus",), levels=(4,), repetitions=1))
    assert [(c.rho, c.level) for c in cs] == [(1000.0, 4.0)]


@pytest.mark.parametrize("overrides, named", [
    (Overrides(rho=(0.5,)), "rho=0.5"),
    (Overrides(mu=(1.5,)), "mu=1.5"),
    (Overrides(rho=(5000,)), "rho=5000"),            # 400 / 5000 rounds to 0 examples on mnist-sample
    (Overrides(datasets=("imagenet1k",)), "'imagenet1k'"),
    (Overrides(methods=("smote",)), "'smote'"),
    (Overrides(methods=("partial-ros",)), "'partial-ros' is not in preset 'quick'"),
    (Overrides(imbalance=("exponential",)), "'exponential' is not in preset 'quick'"),
    (Overrides(imbalance=("zipf",)), "'zipf'"),
    (Overrides(repetitions=0), "repetitions=0"),
    (Overrides(iterations=0), "iterations=0"),
    (Overrides(device="tpu"), "device='tpu'"),
    (Overrides(datasets=("mnist",)), "needs a data directory"),
])
def test_bad_values_are_named(overrides, named):
    with pytest.raises(ValueError) as e:
        expand(PRESETS["quick"], overrides)
    assert named in str(e.value)


def test_pack_groups_by_shared_settings_then_cell():
    cs = expand(PRESETS["cifar10"], Overrides(data_dir="/d", rho=(10,), mu=(0.5,), imbalance=("step",)))
    assert len(cs) == 5 * 4 * 2                                          # one cell, 4 lrs x 2 seeds
    packs = pack(cs, 4)
    for p in packs:
        _check_pack(p)                                                   # run_trials accepts every pack
        assert len(p) <= 4
    assert len(packs) == 4 * 3                                           # per lr: 10 networks -> 4 + 4 + 2
    assert Counter(c for p in packs for c in p) == Counter(cs)                # each network exactly once
    assert pack(cs, 4) == packs                                          # deterministic
    assert pack(cs, 1) == [[c] for c in cs]

    # two cells of 5 networks, pack size 3: each cell fills a pack of its own, then the remainders (2 + 2) fill
    q = expand(PRESETS["quick"], Overrides(imbalance=("step",), repetitions=1))
    packs = pack(q, 3)
    assert [len(p) for p in packs] == [3, 3, 3, 1]
    assert [{cell_of(c) for c in p} for p in packs[:2]] == [{"mnist-sample/step/rho10/mu0.5"},
                                                              {"mnist-sample/step/rho100/mu0.5"}]
    assert len({cell_of(c) for c in packs[2]}) == 2
    # a seed's methods sit together, so ROS and two-phase ROS of one seed share a pack
    five = pack(expand(PRESETS["quick"]), 5)
    assert all({c.seed for c in p} == {p[0].seed} and {c.method for c in p} == set(PAPER_METHODS) for p in five)
    with pytest.raises(ValueError, match="pack_size=0"):
        pack(cs, 0)


def test_names_and_keys():
    c = expand(PRESETS["cifar10"], Overrides(data_dir="/d", rho=(10,), mu=(0.2,), methods=("ros",),
                                             imbalance=("step",), lrs=(0.005,), repetitions=1))[0]
    assert describe(c) == "cifar10-step-rho10-mu0.2-ros-lr0.005-s0"
    assert cell_of(c) == "cifar10/step/rho10/mu0.2"
    p = expand(PRESETS["mnist"], Overrides(data_dir="/d", methods=("partial-rus",), levels=(50,), repetitions=1))[0]
    assert describe(p) == "mnist-step-rho1000-mu0.5-partial-rus-L50-s0"
    assert trial_key(c, "a") == trial_key(c, "a") != trial_key(c, "b")
    assert trial_key(c, "a") != trial_key(p, "a") and len(trial_key(c, "a")) == 40
