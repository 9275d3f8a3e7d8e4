"""imbalance_core.imbalance: the per-class counts of STUDY.md's profiles and the seeded subset they select.

Expected counts are computed here independently of the module, with exact rational arithmetic
(`fractions.Fraction`) and the documented rounding rule (half up: floor(x + 1/2)), or written out
by hand from STUDY.md.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from imbalance_core.datasets import read_cifar10, read_mnist
from imbalance_core.imbalance import Subset, class_counts, class_order, draw_subset, make_subset

MNIST_RHOS = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
MNIST_MUS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CIFAR_RHOS = (2, 10, 20, 50)
CIFAR_MUS = (0.2, 0.5, 0.8)
IMAGENET_CELLS = ((0.1, 10), (0.8, 50), (0.9, 100))


# --------------------------------------------------------------------------- helpers

def half_up(x: Fraction) -> int:
    """Round half up, exactly (the rounding the module documents)."""
    return math.floor(x + Fraction(1, 2))


def q(x) -> Fraction:
    """A grid value as the exact decimal it is written as (0.1 -> 1/10, not the binary double)."""
    return Fraction(str(x))


def expected_step(n: int, C: int, rho, mu) -> list[int]:
    k = half_up(q(mu) * C)
    return sorted([half_up(Fraction(n) / q(rho))] * k + [n] * (C - k))


def expected_linear(n: int, C: int, rho) -> list[int]:
    lo = Fraction(n) / q(rho)
    return [half_up(lo + i * (n - lo) / (C - 1)) for i in range(C)]


def synthetic_labels(per_class: int, C: int = 10, seed: int = 0) -> np.ndarray:
    """Labels of a fake training set with `per_class` examples of each class, shuffled."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(C), per_class))


@pytest.fixture(scope="module")
def mnist_labels(shared_data):
    return read_mnist(shared_data).train_y


@pytest.fixture(scope="module")
def cifar_labels(shared_data):
    return read_cifar10(shared_data / "cifar10").train_y


@pytest.fixture(scope="module")
def big_labels():
    """5000 per class: room for the paper's n = 5000 on a 10-class set (the CIFAR slice has only 500)."""
    return synthetic_labels(5000)


# --------------------------------------------------------------------------- step

def test_study_example():
    """STUDY.md: C=10, mu=0.5, rho=10 -> five classes of 500 and five of 5000."""
    assert class_counts("step", 5000, 10, rho=10, mu=0.5) == [500] * 5 + [5000] * 5


@pytest.mark.parametrize("rho", MNIST_RHOS)
@pytest.mark.parametrize("mu", MNIST_MUS)
def test_step_mnist_grid(rho, mu):
    counts = class_counts("step", 5000, 10, rho=rho, mu=mu)
    assert counts == expected_step(5000, 10, rho, mu)
    # by hand: mu*10 minority classes of 5000/rho (every grid rho divides 5000)
    k = round(mu * 10)
    assert counts == [5000 // rho] * k + [5000] * (10 - k)
    assert max(counts) / min(counts) == rho


@pytest.mark.parametrize("rho", CIFAR_RHOS)
@pytest.mark.parametrize("mu", CIFAR_MUS)
def test_step_cifar_grid(rho, mu):
    counts = class_counts("step", 5000, 10, rho=rho, mu=mu)
    assert counts == expected_step(5000, 10, rho, mu)
    assert counts.count(5000 // rho) == round(mu * 10) and counts.count(5000) == 10 - round(mu * 10)


@pytest.mark.parametrize("mu,rho,hand", [(0.1, 10, (100, 100)), (0.8, 50, (800, 20)), (0.9, 100, (900, 10))])
def test_step_imagenet_grid(mu, rho, hand):
    counts = class_counts("step", 1000, 1000, rho=rho, mu=mu)
    assert len(counts) == 1000
    assert counts == expected_step(1000, 1000, rho, mu)
    k, small = hand                                    # (minority classes, their size), by hand
    assert counts.count(small) == k and counts.count(1000) == 1000 - k


def test_rounding_half_up_documented():
    """The paper does not say how to round; the module documents half up (floor(x + 0.5)).

    Python's round() would give the even neighbour (2.5 -> 2); half up gives 3.
    """
    assert class_counts("step", 5, 10, rho=2, mu=0.5)[:5] == [3] * 5          # 5/2 = 2.5 -> 3
    assert class_counts("step", 100, 10, rho=10, mu=0.25).count(10) == 3     # 0.25*10 = 2.5 -> 3 classes
    assert class_counts("step", 100, 10, rho=10, mu=0.05).count(10) == 1     # 0.5 -> 1 class
    assert class_counts("step", 100, 10, rho=10, mu=0.15).count(10) == 2     # 1.5 -> 2 (binary 0.15*10)
    assert class_counts("step", 100, 10, rho=10, mu=0.45).count(10) == 5     # 4.5 -> 5
    # linear, C=3, n=5, rho=2: 2.5, 3.75, 5 -> 3, 4, 5
    assert class_counts("linear", 5, 3, rho=2) == [3, 4, 5]


def test_balanced_and_mu_one():
    assert class_counts("balanced", 400, 10) == [400] * 10
    assert class_counts("step", 5000, 10, rho=10, mu=1.0) == [500] * 10


# --------------------------------------------------------------------------- linear

def check_linear(counts: list[int], n: int, rho) -> None:
    C = len(counts)
    assert counts[0] == half_up(Fraction(n) / q(rho))        # min = n / rho (rounded)
    assert counts[-1] == n                                    # max = n
    exact = (n - Fraction(n) / q(rho)) / (C - 1)              # constant difference before rounding
    diffs = np.diff(counts)
    assert all(abs(d - exact) < 1 for d in diffs), (diffs, float(exact))
    assert diffs.max() - diffs.min() <= 1


@pytest.mark.parametrize("rho", MNIST_RHOS)
def test_linear_mnist_grid(rho):
    counts = class_counts("linear", 5000, 10, rho=rho)
    assert counts == expected_linear(5000, 10, rho)
    check_linear(counts, 5000, rho)


@pytest.mark.parametrize("rho", CIFAR_RHOS)
def test_linear_cifar_grid(rho):
    counts = class_counts("linear", 5000, 10, rho=rho)
    assert counts == expected_linear(5000, 10, rho)
    check_linear(counts, 5000, rho)


def test_linear_by_hand():
    # rho=10: 500 + i*500, exact
    assert class_counts("linear", 5000, 10, rho=10) == [500 * (i + 1) for i in range(10)]
    # rho=5000: 1 + i*4999/9 = 1, 556.44, 1111.89, 1667.33, 2222.78, 2778.22, 3333.67, 3889.11, 4444.56, 5000
    assert class_counts("linear", 5000, 10, rho=5000) == [1, 556, 1112, 1667, 2223, 2778, 3334, 3889, 4445, 5000]
    # rho=2, CIFAR: 2500 + i*2500/9
    assert class_counts("linear", 5000, 10, rho=2) == [2500, 2778, 3056, 3333, 3611, 3889, 4167, 4444, 4722, 5000]


def test_exponential_profile():
    """Beyond the paper (CIFAR-10-LT): n_i = n * rho^(-i/(C-1)); smallest first, consecutive ratio rho^(1/(C-1))."""
    counts = class_counts("exponential", 5000, 10, rho=100)
    assert counts[0] == 50 and counts[-1] == 5000 and counts == sorted(counts)
    ratio = 100 ** (1 / 9)                      # 1.6681
    for a, b in zip(counts, counts[1:]):
        assert abs(b - a * ratio) <= 0.5 * (1 + ratio) + 1e-9   # each count off by at most 1/2


# --------------------------------------------------------------------------- subsets on real labels

def test_rho_5000_mnist_single_example(mnist_labels):
    sub = make_subset(mnist_labels, "mnist", "step", 5000, rho=5000, mu=0.5, seed=3)
    counts = np.bincount(mnist_labels[sub.indices], minlength=10)
    assert sorted(counts.tolist()) == [1] * 5 + [5000] * 5
    assert counts.tolist() == list(sub.counts)
    sub = make_subset(mnist_labels, "mnist", "linear", 5000, rho=5000, mu=0.5, seed=3)
    assert sorted(sub.counts) == [1, 556, 1112, 1667, 2223, 2778, 3334, 3889, 4445, 5000]
    assert np.bincount(mnist_labels[sub.indices], minlength=10).tolist() == list(sub.counts)


@pytest.mark.parametrize("profile,rho,mu", [("step", 10, 0.5), ("step", 1000, 0.9), ("linear", 100, 0.5),
                                            ("balanced", 1, 0.5)])
def test_subset_indices_right_class_unique(mnist_labels, profile, rho, mu):
    sub = make_subset(mnist_labels, "mnist", profile, 5000, rho=rho, mu=mu, seed=7)
    assert isinstance(sub, Subset) and sub.indices.dtype == np.int64
    assert len(np.unique(sub.indices)) == len(sub.indices) == sum(sub.counts)
    assert np.bincount(mnist_labels[sub.indices], minlength=10).tolist() == list(sub.counts)
    assert sorted(sub.counts) == sorted(class_counts(profile, 5000, 10, rho=rho, mu=mu))
    # documented layout: classes concatenated by label, sorted within class
    y = mnist_labels[sub.indices]
    assert np.all(np.diff(y) >= 0)
    for c in range(10):
        assert np.all(np.diff(sub.indices[y == c]) > 0)
    # priors are the class frequencies of the subset
    np.testing.assert_allclose(sub.priors, np.asarray(sub.counts) / sum(sub.counts))


def test_subset_determinism_and_global_rng(mnist_labels):
    args = (mnist_labels, "mnist", "step", 5000, 100, 0.5)
    a = make_subset(*args, seed=11)
    np.random.seed(1)
    state = np.random.get_state()
    b = make_subset(*args, seed=11)
    after = np.random.get_state()
    # the global numpy RNG is neither advanced ...
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]
    np.random.seed(999)
    np.random.random(17)
    c = make_subset(*args, seed=11)          # ... nor read
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.indices, c.indices)
    assert a.counts == b.counts == c.counts
    other = make_subset(*args, seed=12)
    assert not np.array_equal(a.indices, other.indices)


def test_mnist_minority_classes_random_per_seed(mnist_labels):
    minority = set()
    for seed in range(8):
        sub = make_subset(mnist_labels, "mnist", "step", 5000, rho=10, mu=0.5, seed=seed)
        small = frozenset(int(c) for c in np.flatnonzero(np.asarray(sub.counts) == 500))
        assert len(small) == 5
        minority.add(small)
    assert len(minority) > 1, "MNIST minority classes must be re-drawn per seed"


def test_random_minority_roughly_uniform():
    """Over 400 seeds each label is a minority class (mu=0.5) about half the time (5 sd = 0.125)."""
    labels = synthetic_labels(10)
    hits = np.zeros(10)
    for seed in range(400):
        sub = make_subset(labels, "mnist", "step", 10, rho=10, mu=0.5, seed=seed)
        hits += np.asarray(sub.counts) == 1
    assert np.all(np.abs(hits / 400 - 0.5) < 0.125), hits / 400


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cifar_minority_lowest_labels_nested(big_labels, seed):
    sets = []
    for mu in CIFAR_MUS:
        for rho in CIFAR_RHOS:
            sub = make_subset(big_labels, "cifar10", "step", 5000, rho=rho, mu=mu, seed=seed)
            small = set(np.flatnonzero(np.asarray(sub.counts) == 5000 // rho).tolist())
            assert small == set(range(round(mu * 10))), (mu, rho, small)
            assert np.bincount(big_labels[sub.indices], minlength=10).tolist() == list(sub.counts)
        sets.append(small)
    assert sets[0] < sets[1] < sets[2]                       # mu .2 inside .5 inside .8
    lin = make_subset(big_labels, "cifar10", "linear", 5000, rho=10, mu=0.5, seed=seed)
    assert list(lin.counts) == expected_linear(5000, 10, 10)  # label 0 smallest, label 9 largest


def test_cifar_slice_real_labels(cifar_labels):
    sub = make_subset(cifar_labels, "cifar10", "step", 500, rho=10, mu=0.5, seed=0)
    assert list(sub.counts) == [50] * 5 + [500] * 5
    assert np.bincount(cifar_labels[sub.indices], minlength=10).tolist() == list(sub.counts)


def test_imagenet_order_random():
    rng = np.random.default_rng(0)
    order = class_order(1000, "random", rng)
    assert sorted(order.tolist()) == list(range(1000)) and not np.array_equal(order, np.arange(1000))
    assert np.array_equal(class_order(5, "lowest", rng), np.arange(5))
    with pytest.raises(ValueError, match="'sideways'"):
        class_order(5, "sideways", rng)


# --------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("rho,shown", [(0.5, "rho=0.5"), (float("nan"), "rho=nan"), (0, "rho=0"),
                                       (float("inf"), "rho=inf")])
@pytest.mark.parametrize("profile", ["step", "linear"])
def test_bad_rho(profile, rho, shown):
    with pytest.raises(ValueError, match=shown):
        class_counts(profile, 5000, 10, rho=rho, mu=0.5)


@pytest.mark.parametrize("mu,shown", [(0, "mu=0"), (1.5, "mu=1.5"), (-0.1, "mu=-0.1"), (float("nan"), "mu=nan")])
def test_bad_mu(mu, shown):
    with pytest.raises(ValueError, match=shown):
        class_counts("step", 5000, 10, rho=10, mu=mu)


@pytest.mark.parametrize("profile", ["step", "linear"])
def test_count_rounds_to_zero(profile):
    # 10 / 50 = 0.2 -> 0 examples
    with pytest.raises(ValueError, match="rho=50") as e:
        class_counts(profile, 10, 10, rho=50, mu=0.5)
    assert "rounds to 0" in str(e.value)


def test_more_examples_than_class_has(mnist_labels):
    # MNIST training classes hold 5421 (label 5) ... 6742 (label 1) examples
    assert np.bincount(mnist_labels).min() == 5421 == np.sum(mnist_labels == 5)
    with pytest.raises(ValueError, match="6000") as e:
        make_subset(mnist_labels, "mnist", "balanced", 6000, rho=1, mu=0.5, seed=0)
    assert "5421" in str(e.value)                # the hint names the binding (smallest) class size
    with pytest.raises(ValueError, match="class 5 has 5421 training examples but 5500") as e:
        make_subset(mnist_labels, "mnist", "balanced", 5500, rho=1, mu=0.5, seed=0)
    # step: only the majority classes need n; whichever label draws a majority slot fails
    with pytest.raises(ValueError, match="6000"):
        make_subset(mnist_labels, "mnist", "step", 6000, rho=10, mu=0.5, seed=0)


def test_unknown_profile():
    with pytest.raises(ValueError, match="'cubic'"):
        class_counts("cubic", 5000, 10, rho=10, mu=0.5)
    with pytest.raises(ValueError, match="'cubic'"):
        make_subset(synthetic_labels(10), "mnist", "cubic", 10, rho=1, mu=0.5, seed=0)


@pytest.mark.parametrize("n", [0, -5, 2.5])
def test_bad_n(n):
    with pytest.raises(ValueError, match=f"n={n!r}"):
        class_counts("step", n, 10, rho=10, mu=0.5)


def test_draw_subset_rank_mapping():
    """draw_subset gives rank r's count to label order[r]; with 'lowest' label r gets counts_by_rank[r]."""
    labels = synthetic_labels(20, C=4)
    sub = draw_subset(labels, [1, 2, 3, 4], "lowest", seed=0)
    assert sub.counts == (1, 2, 3, 4)
    sub = draw_subset(labels, [1, 2, 3, 4], "random", seed=5)
    assert sorted(sub.counts) == [1, 2, 3, 4]
    assert np.bincount(labels[sub.indices], minlength=4).tolist() == list(sub.counts)


def test_numpy_scalars_accepted():
    """Grid values often come out of numpy arrays: np.int64 / np.float32 / np.float64 are valid numbers."""
    expected = [500] * 5 + [5000] * 5
    for rho in (np.int64(10), np.float32(10), np.float64(10)):
        for mu in (np.float64(0.5), np.float32(0.5)):
            assert class_counts("step", np.int64(5000), 10, rho=rho, mu=mu) == expected
    assert class_counts("linear", 5000, 10, rho=np.int64(10)) == [500 * (i + 1) for i in range(10)]
    with pytest.raises(ValueError, match="rho="):
        class_counts("step", 5000, 10, rho=np.float64(0.5), mu=0.5)
    with pytest.raises(ValueError, match="rho=True"):
        class_counts("step", 5000, 10, rho=True, mu=0.5)
