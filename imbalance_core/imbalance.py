"""Imbalance profiles (per-class counts) and the seeded subset of a training set they select.

Conventions (STUDY.md):
  n   balanced count per class before imbalance
  rho max class size / min class size (>= 1)
  mu  fraction of classes that are minority, in (0, 1]

Choices this module makes where the paper is silent (documented in the README):
  * rounding: every count is rounded half up (floor(x + 0.5));
  * linear profile: class i of C (in the class order below) gets round(n/rho + i * (n - n/rho) / (C-1));
  * class order: which classes are the minority ones, per dataset as STUDY.md says:
    MNIST and ImageNet random (re-drawn per seed), CIFAR-10 the lowest labels.
"""
from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass

import numpy as np

from .specs import DATASETS as _SPECS

PROFILES = ("balanced", "step", "linear", "exponential")
# which classes get the smallest counts, per dataset (STUDY.md, "Imbalance")


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + 1e-9))


def _is_real(x) -> bool:
    """A real number, numpy scalars included (np.int64 and np.float32 are not int/float subclasses)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_rho(rho: float) -> float:
    if not _is_real(rho) or not math.isfinite(rho) or rho < 1:
        raise ValueError(f"rho={rho!r} is not allowed: rho = max/min class size must be a number >= 1")
    return float(rho)


def _check_mu(mu: float) -> float:
    if not _is_real(mu) or not (0 < mu <= 1):
        raise ValueError(f"mu={mu!r} is not allowed: mu = fraction of minority classes must be in (0, 1]")
    return float(mu)


def _check_positive(counts: list[int], what: str) -> list[int]:
    if min(counts) < 1:
        raise ValueError(f"{what} gives a class count that rounds to {min(counts)}; every class needs >= 1 example "
                         f"(lower rho or raise n)")
    return counts


def class_counts(profile: str, n: int, num_classes: int, rho: float = 1.0, mu: float = 0.5) -> list[int]:
    """Per-class counts in *rank* order: entry 0 is the class that gets the fewest examples.

    Use `class_order` to map ranks to labels.
    """
    if profile not in PROFILES:
        raise ValueError(f"imbalance profile {profile!r} is unknown; choose one of {', '.join(PROFILES)}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n={n!r} is not allowed: the balanced count per class must be an integer >= 1")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} is not allowed: need >= 2 classes")
    C = int(num_classes)
    if profile == "balanced":
        return [int(n)] * C
    rho = _check_rho(rho)
    if profile == "step":
        mu = _check_mu(mu)
        n_min = round(mu * C, 9)
        k = round_half_up(n_min)
        if k < 1:
            raise ValueError(f"mu={mu} with {C} classes gives round(mu*C)={k} minority classes; need >= 1")
        small = round_half_up(n / rho)
        return _check_positive([small] * k + [int(n)] * (C - k), f"step(rho={rho:g}, mu={mu:g}, n={n})")
    if profile == "linear":
        lo = n / rho
        counts = [round_half_up(lo + i * (n - lo) / (C - 1)) for i in range(C)]
        return _check_positive(counts, f"linear(rho={rho:g}, n={n})")
    # exponential ("long-tailed", CIFAR-10-LT): n_i = n * rho^(-i/(C-1)), smallest first
    counts = [round_half_up(n * rho ** (-(C - 1 - i) / (C - 1))) for i in range(C)]
    return _check_positive(counts, f"exponential(rho={rho:g}, n={n})")


def class_order(num_classes: int, order: str, rng: np.random.Generator) -> np.ndarray:
    """Labels sorted by rank: order[r] is the label that gets the r-th smallest count."""
    if order == "lowest":
        return np.arange(num_classes)
    if order == "random":
        return rng.permutation(num_classes)
    raise ValueError(f"minority order {order!r} is unknown; choose 'lowest' or 'random'")


@dataclass(frozen=True)
class Subset:
    """The imbalanced training set of one trial: indices into the full training arrays."""
    indices: np.ndarray          # int64, sorted within class, classes concatenated by label
    counts: tuple[int, ...]      # per label (index = label)

    @property
    def priors(self) -> np.ndarray:
        c = np.asarray(self.counts, dtype=np.float64)
        return c / c.sum()

    @property
    def digest(self) -> str:
        """The subset's identity: sha256 of its indices into the training set (int64 little-endian), hex."""
        return hashlib.sha256(np.asarray(self.indices, dtype="<i8").tobytes()).hexdigest()


def draw_subset(labels: np.ndarray, counts_by_rank: list[int], order: str, seed: int) -> Subset:
    """Draw the imbalanced subset: per class, `count` examples uniformly without replacement.

    Uses a generator seeded by the trial's own `seed` (never the global RNG). The same
    generator first decides which labels are minority (when `order` is random).
    """
    labels = np.asarray(labels)
    C = len(counts_by_rank)
    rng = np.random.default_rng([int(seed), 0x1B4])  # own stream, independent of other uses of seed
    ranks_to_label = class_order(C, order, rng)
    counts = np.zeros(C, dtype=np.int64)
    counts[ranks_to_label] = counts_by_rank
    pools = [np.flatnonzero(labels == label) for label in range(C)]
    sizes = [len(p) for p in pools]
    for label in range(C):
        if counts[label] > sizes[label]:
            raise ValueError(f"class {label} has {sizes[label]} training examples but {int(counts[label])} were asked "
                             f"for; lower n (the smallest class of this dataset has {min(sizes)})")
    picked = [np.sort(rng.choice(pool, size=int(k), replace=False)) for pool, k in zip(pools, counts)]
    return Subset(indices=np.concatenate(picked).astype(np.int64), counts=tuple(int(c) for c in counts))


def make_subset(labels: np.ndarray, dataset: str, profile: str, n: int, rho: float, mu: float, seed: int) -> Subset:
    """The imbalanced training subset of one trial, as STUDY.md defines it for `dataset`."""
    C = int(np.max(labels)) + 1
    counts = class_counts(profile, n, C, rho=rho, mu=mu)
    return draw_subset(labels, counts, (_SPECS[dataset].minority_order if dataset in _SPECS else "random"), seed)
