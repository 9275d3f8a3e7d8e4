"""Sampling plans: what each method trains on, drawn once per network and reshuffled every epoch.

A plan never copies data: an epoch is an array of indices into the full training arrays
(repeats allowed, which is how ROS oversamples). Every loader backend consumes the same plan.

As Caffe ran the study (STUDY.md, "How Caffe ran it"), a resampled training set is made once per
network and then read epoch after epoch: RUS keeps the same few majority examples for the whole run,
ROS the same replicated copies, and so do partial ROS/RUS and the first phase of two-phase methods.
`SamplingPlan.kept` is that set, drawn once from (seed, stream_id); `epoch(e)` is a permutation of it.
Only `weighted` and `class-balanced` draw afresh every epoch (torch's WeightedRandomSampler semantics,
as cRT's class-balanced sampling does; not a paper method).

Samplers (the methods that use them: imbalance_core/methods.py):
  baseline       the imbalanced subset as it is
  ros            every class oversampled to the largest class
  rus            every class undersampled to the smallest class
  partial-ros    every class oversampled to at least max / level       (level = remaining imbalance, 1..rho)
  partial-rus    every class undersampled to at most  min * level
  weighted       a per-class weight vector: each epoch draws len(subset) examples with replacement,
                 P(example) proportional to its class weight (torch's WeightedRandomSampler semantics)
  class-balanced `weighted` with class weights 1 / n_c: every class equally likely (cRT's second phase)
Two-phase methods train phase 1 on ros/rus and phase 2 on baseline (methods.py).
Thresholding is not a sampling method: it is a metric of any trained network (metrics.py).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .imbalance import Subset

SAMPLERS = ("baseline", "ros", "rus", "partial-ros", "partial-rus", "weighted", "class-balanced")
LEVEL_SAMPLERS = ("partial-ros", "partial-rus")      # those that take a level (a method with one `needs_level`)


def target_counts(counts: tuple[int, ...] | list[int], sampler: str, level: float | None = None) -> list[int]:
    """Per-class examples per epoch that `sampler` delivers from a subset with `counts`."""
    counts = [int(c) for c in counts]
    hi, lo = max(counts), min(counts)
    if sampler in ("baseline", "weighted", "class-balanced"):
        return counts
    if sampler == "ros":
        return [hi] * len(counts)
    if sampler == "rus":
        return [lo] * len(counts)
    if sampler in LEVEL_SAMPLERS:
        rho = hi / lo
        # A profile's nominal rho can exceed hi / lo because n / rho is rounded (half up) to lo: any rho with
        # n / rho >= lo - 1/2 gives this subset, so level = that nominal rho (= no sampling) is accepted too.
        top = hi / (lo - 0.5) * (1 + 1e-12)
        if level is None or not (1 <= level <= top):
            raise ValueError(f"sampling level={level!r} is not allowed for {sampler}: it is the imbalance ratio left "
                             f"after sampling, in [1, {rho:g}] (1 = full balance, {rho:g} = none; a nominal rho up "
                             f"to {top:g} that rounds to these counts is accepted as none)")
        if sampler == "partial-ros":
            floor_ = math.ceil(hi / level - 1e-9)
            return [max(c, floor_) for c in counts]
        ceil_ = math.floor(lo * level + 1e-9)
        return [min(c, ceil_) for c in counts]
    raise ValueError(f"sampler {sampler!r} is unknown; choose one of {', '.join(SAMPLERS)}")


def _class_draw(pool: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """`target` indices from `pool`: whole copies of the pool, then a random part without replacement."""
    reps, rest = divmod(target, len(pool))
    parts = [pool] * reps
    if rest:
        parts.append(rng.choice(pool, size=rest, replace=False))
    return np.concatenate(parts) if parts else pool[:0]


@dataclass(frozen=True)
class SamplingPlan:
    """One network's training stream for one phase: a set drawn once from `seed`, reshuffled per epoch."""
    subset: Subset
    labels: np.ndarray                 # labels of the full training arrays
    sampler: str = "baseline"
    level: float | None = None
    class_weights: tuple[float, ...] | None = None
    seed: int = 0
    stream_id: int = 0                 # separates the streams of one seed (e.g. the two phases)

    @staticmethod
    def check_level(sampler: str, counts, level) -> None:
        target_counts(counts, sampler, level)

    def __post_init__(self):
        if self.sampler == "class-balanced":
            object.__setattr__(self, "class_weights", tuple(1.0 / max(int(c), 1) for c in self.subset.counts))
        if self.sampler in ("weighted", "class-balanced"):
            w = self.class_weights
            ok = w is not None and len(w) == len(self.subset.counts)
            ok = ok and all(math.isfinite(x) and x >= 0 for x in w) and sum(w) > 0
            if not ok:
                raise ValueError(f"class_weights={w!r} is not allowed: need {len(self.subset.counts)} "
                                 f"non-negative weights with a positive sum")
        target_counts(self.subset.counts, self.sampler, self.level)  # validates sampler and level

    @property
    def counts(self) -> list[int]:
        return target_counts(self.subset.counts, self.sampler, self.level)

    @property
    def epoch_size(self) -> int:
        return int(sum(self.counts))

    def _pools(self) -> list[np.ndarray]:
        sub_labels = self.labels[self.subset.indices]
        return [self.subset.indices[sub_labels == c] for c in range(len(self.subset.counts))]

    @functools.cached_property
    def kept(self) -> np.ndarray:
        """The network's training set for this phase (repeats = ROS copies), drawn once from (seed, stream_id).

        Class by class in label order, unshuffled; `epoch` permutes it. `weighted` has no fixed set.
        """
        if self.sampler in ("weighted", "class-balanced"):
            raise ValueError(f"sampler {self.sampler!r} draws a new set every epoch; it has no fixed kept set")
        if self.sampler == "baseline":
            return self.subset.indices
        rng = np.random.default_rng([int(self.seed), int(self.stream_id), 0x5E7])
        return np.concatenate([_class_draw(p, t, rng) for p, t in zip(self._pools(), self.counts)])

    def epoch(self, epoch: int) -> np.ndarray:
        """The shuffled indices of epoch `epoch`: a permutation of `kept` (deterministic in seed and epoch)."""
        rng = np.random.default_rng([int(self.seed), int(self.stream_id), 0x5A3, int(epoch)])
        if self.sampler in ("weighted", "class-balanced"):
            idx = self.subset.indices
            w = np.asarray(self.class_weights, dtype=np.float64)[self.labels[idx]]
            return rng.choice(idx, size=len(idx), replace=True, p=w / w.sum())
        return rng.permutation(self.kept)

    def stream(self, start_epoch: int = 0) -> "IndexStream":
        return IndexStream(self, start_epoch)

    def batches(self, batch_size: int, start_epoch: int = 0):
        """Endless stream of index batches of exactly `batch_size`, crossing epoch boundaries."""
        stream = self.stream(start_epoch)
        while True:
            yield stream.take(batch_size)


class IndexStream:
    """Stateful reader of a plan's epochs: `take(n)` returns the next n indices (epochs concatenated)."""

    def __init__(self, plan: SamplingPlan, start_epoch: int = 0):
        self.plan, self.next_epoch = plan, start_epoch
        self.buf = np.empty(0, dtype=np.int64)

    def take(self, n: int) -> np.ndarray:
        parts, have = [self.buf], len(self.buf)
        while have < n:
            e = self.plan.epoch(self.next_epoch)
            self.next_epoch += 1
            parts.append(e)
            have += len(e)
        allidx = np.concatenate(parts) if len(parts) > 1 else self.buf
        self.buf = allidx[n:]
        return allidx[:n]
