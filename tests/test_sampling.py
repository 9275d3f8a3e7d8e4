"""imbalance_core.sampling: what each method trains on, checked by counting the labels of real epochs.

Expected per-class counts come from STUDY.md's definitions (ROS: every class up to the largest; RUS:
every class down to the smallest; partial: the imbalance ratio left after sampling is `level`),
worked out by hand for the subsets used here.
"""
from __future__ import annotations

import numpy as np
import pytest

from imbalance_core.imbalance import Subset, make_subset
from imbalance_core import methods as M
from imbalance_core.sampling import SAMPLERS, SamplingPlan, target_counts


def synthetic_labels(per_class: int, C: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(C), per_class))


@pytest.fixture(scope="module")
def labels():
    return synthetic_labels(5000)


@pytest.fixture(scope="module")
def rho1000(labels):
    """MNIST's partial-sampling cell: step, n=5000, rho=1000, mu=0.5 -> five classes of 5, five of 5000."""
    sub = make_subset(labels, "cifar10", "step", 5000, rho=1000, mu=0.5, seed=0)
    assert sub.counts == (5,) * 5 + (5000,) * 5            # cifar10 order: labels 0-4 are the minority
    return sub


@pytest.fixture(scope="module")
def small(labels):
    """step, n=100, rho=10, mu=0.5: labels 0-4 have 10 examples, 5-9 have 100 (550 in all)."""
    sub = make_subset(labels, "cifar10", "step", 100, rho=10, mu=0.5, seed=1)
    assert sub.counts == (10,) * 5 + (100,) * 5
    return sub


def epoch_counts(plan: SamplingPlan, labels, e: int = 0) -> list[int]:
    return np.bincount(labels[plan.epoch(e)], minlength=len(plan.subset.counts)).tolist()


# --------------------------------------------------------------------------- full ROS / RUS / baseline

@pytest.mark.parametrize("e", [0, 1, 5])
def test_ros_rus_baseline_epoch_counts(labels, small, e):
    members = set(small.indices.tolist())
    ros = SamplingPlan(small, labels, "ros", seed=0)
    assert epoch_counts(ros, labels, e) == [100] * 10 and ros.epoch_size == 1000
    rus = SamplingPlan(small, labels, "rus", seed=0)
    assert epoch_counts(rus, labels, e) == [10] * 10 and rus.epoch_size == 100
    base = SamplingPlan(small, labels, "baseline", seed=0)
    assert epoch_counts(base, labels, e) == [10] * 5 + [100] * 5
    assert sorted(base.epoch(e).tolist()) == sorted(small.indices.tolist())     # a permutation of the subset
    for plan in (ros, rus, base):
        assert set(plan.epoch(e).tolist()) <= members                            # never leaves the subset


def test_ros_replicates_whole_minority_class(labels, small):
    """ROS 10 -> 100: every minority example appears exactly 10 times; the majority once each."""
    ep = SamplingPlan(small, labels, "ros", seed=3).epoch(0)
    uniq, times = np.unique(ep, return_counts=True)
    minority = labels[uniq] < 5
    assert np.all(times[minority] == 10) and np.all(times[~minority] == 1)
    assert minority.sum() == 50


def test_ros_non_multiple(labels):
    """7 -> 100 = 14 whole copies + 2 more: each example 14 or 15 times, exactly 2 of them 15 times."""
    idx = np.sort(np.concatenate([np.flatnonzero(labels == 0)[:7], np.flatnonzero(labels == 1)[:100]]))
    two = labels[idx]                                     # a 2-class problem: relabel via a view of the subset
    lab = np.full_like(labels, -1)
    lab[idx] = two
    plan = SamplingPlan(Subset(indices=idx, counts=(7, 100)), lab, "ros", seed=0)
    for e in (0, 1):
        ep = plan.epoch(e)
        assert np.bincount(lab[ep], minlength=2).tolist() == [100, 100]
        uniq, times = np.unique(ep[lab[ep] == 0], return_counts=True)
        assert len(uniq) == 7 and sorted(times.tolist()) == [14] * 5 + [15] * 2


def test_rus_draws_without_replacement_once_per_network(labels, small):
    """Caffe's RUS: one database per network, so the same majority examples every epoch (order reshuffled)."""
    plan = SamplingPlan(small, labels, "rus", seed=0)
    e0, e1 = plan.epoch(0), plan.epoch(1)
    assert len(np.unique(e0)) == len(e0) == 100
    assert not np.array_equal(e0, e1)                     # reshuffled ...
    assert set(e0.tolist()) == set(e1.tolist()) == set(plan.kept.tolist())   # ... but the same examples
    assert set(e0[labels[e0] < 5].tolist()) == set(small.indices[labels[small.indices] < 5].tolist())
    other = SamplingPlan(small, labels, "rus", seed=1)   # another network's seed keeps other majority examples
    assert set(other.kept[labels[other.kept] >= 5].tolist()) != set(e0[labels[e0] >= 5].tolist())


def _seen_over(plan: SamplingPlan, draws: int) -> np.ndarray:
    """Distinct examples a network sees in `draws` training draws (batches crossing epochs, as training does)."""
    gen = plan.batches(64)
    return np.unique(np.concatenate([next(gen) for _ in range(-(-draws // 64))]))


def test_rus_at_rho_1000_sees_only_its_fixed_subset_over_the_run():
    """MNIST step rho 1000 mu 0.5 on the real label layout: RUS keeps 5 per class = 50 images, and 2,000
    iterations of batch 64 (2,560 epochs of 50) never show the network a 51st image."""
    labels = synthetic_labels(5000)
    sub = make_subset(labels, "mnist", "step", 5000, rho=1000, mu=0.5, seed=0)
    assert sorted(sub.counts) == [5] * 5 + [5000] * 5
    plan = SamplingPlan(sub, labels, "rus", seed=0, stream_id=1)
    seen = _seen_over(plan, 2000 * 64)
    assert len(seen) == 50 and set(seen.tolist()) == set(plan.kept.tolist())
    assert np.bincount(labels[seen], minlength=10).tolist() == [5] * 10
    assert set(seen.tolist()) <= set(sub.indices.tolist())
    # the same holds for partial RUS: level 10 caps the majority at 50 each -> 5 x 5 + 5 x 50 = 275 images
    part = SamplingPlan(sub, labels, "partial-rus", level=10, seed=0, stream_id=1)
    seen = _seen_over(part, 1000 * 64)
    assert len(seen) == 275 and set(seen.tolist()) == set(part.kept.tolist())
    assert sorted(np.bincount(labels[seen], minlength=10).tolist()) == [5] * 5 + [50] * 5


@pytest.mark.parametrize("sampler,level", [("ros", None), ("partial-ros", 10)])
def test_ros_copies_fixed_per_network(labels, rho1000, sampler, level):
    """ROS replicates the same copies every epoch: 5000 = 1000 whole copies of each of 5 minority examples,
    so the multiset is fixed; partial ROS to level 10 needs 500 = 100 copies each. The remainder part of a
    non-multiple target is drawn once too (test_ros_non_multiple_remainder_fixed)."""
    plan = SamplingPlan(rho1000, labels, sampler, level=level, seed=3)
    for e in (0, 1, 7):
        assert np.array_equal(np.sort(plan.epoch(e)), np.sort(plan.kept))


def test_ros_non_multiple_remainder_fixed(labels):
    """7 -> 100: 14 whole copies + 2 extra examples, and the same 2 extra examples in every epoch."""
    idx = np.sort(np.concatenate([np.flatnonzero(labels == 0)[:7], np.flatnonzero(labels == 1)[:100]]))
    lab = np.full_like(labels, -1)
    lab[idx] = labels[idx]
    plan = SamplingPlan(Subset(indices=idx, counts=(7, 100)), lab, "ros", seed=0)
    extra = []
    for e in range(5):
        uniq, times = np.unique(plan.epoch(e)[lab[plan.epoch(e)] == 0], return_counts=True)
        extra.append(tuple(uniq[times == 15].tolist()))
    assert len(extra[0]) == 2 and len(set(extra)) == 1


def test_weighted_has_no_fixed_set(labels, small):
    with pytest.raises(ValueError, match="weighted"):
        SamplingPlan(small, labels, "weighted", class_weights=(1.0,) * 10).kept


def test_rho_5000_ros_single_example(labels):
    sub = make_subset(labels, "cifar10", "step", 5000, rho=5000, mu=0.1, seed=0)
    assert sub.counts == (1,) + (5000,) * 9
    the_one = sub.indices[labels[sub.indices] == 0]
    assert len(the_one) == 1
    plan = SamplingPlan(sub, labels, "ros", seed=0)
    for e in (0, 1):
        ep = plan.epoch(e)
        assert epoch_counts(plan, labels, e) == [5000] * 10
        assert np.all(ep[labels[ep] == 0] == the_one[0])  # one example replicated 5000 times
        assert np.sum(ep == the_one[0]) == 5000
    assert epoch_counts(SamplingPlan(sub, labels, "rus", seed=0), labels) == [1] * 10


# --------------------------------------------------------------------------- partial sampling

# rho = 1000 (5 vs 5000). partial-ros at level L: minority up to ceil(5000 / L); partial-rus: majority down
# to floor(5 * L). By hand:
PARTIAL_ROS = {1: 5000, 2: 2500, 10: 500, 100: 50, 1000: 5, 3: 1667}
PARTIAL_RUS = {1: 5, 2: 10, 10: 50, 100: 500, 1000: 5000, 2.5: 12}


@pytest.mark.parametrize("level,minority", sorted(PARTIAL_ROS.items()))
def test_partial_ros_levels(labels, rho1000, level, minority):
    plan = SamplingPlan(rho1000, labels, "partial-ros", level=level, seed=0)
    got = epoch_counts(plan, labels)
    assert got == [minority] * 5 + [5000] * 5
    assert max(got) / min(got) <= level + 1e-9            # the imbalance left is at most `level`
    assert max(got) / (min(got) - 1) > level              # ... and one example fewer would exceed it


@pytest.mark.parametrize("level,majority", sorted(PARTIAL_RUS.items()))
def test_partial_rus_levels(labels, rho1000, level, majority):
    plan = SamplingPlan(rho1000, labels, "partial-rus", level=level, seed=0)
    got = epoch_counts(plan, labels)
    assert got == [5] * 5 + [majority] * 5
    assert max(got) / min(got) <= level + 1e-9
    assert (max(got) + 1) / min(got) > level


def test_partial_endpoints_equal_full_and_baseline(labels, rho1000):
    def counts(sampler, level=None):
        return epoch_counts(SamplingPlan(rho1000, labels, sampler, level=level, seed=0), labels)
    assert counts("partial-ros", 1) == counts("ros")
    assert counts("partial-rus", 1) == counts("rus")
    assert counts("partial-ros", 1000) == counts("baseline") == list(rho1000.counts)
    assert counts("partial-rus", 1000) == counts("baseline")


def test_partial_on_linear_profile(labels):
    sub = make_subset(labels, "cifar10", "linear", 5000, rho=10, mu=0.5, seed=0)
    assert sub.counts == tuple(500 * (i + 1) for i in range(10))
    ros = epoch_counts(SamplingPlan(sub, labels, "partial-ros", level=2, seed=0), labels)
    assert ros == [2500] * 5 + [3000, 3500, 4000, 4500, 5000]
    rus = epoch_counts(SamplingPlan(sub, labels, "partial-rus", level=2, seed=0), labels)
    assert rus == [500, 1000] + [1000] * 8


def test_partial_level_nominal_rho_after_rounding(labels):
    """n=400, rho=250: 400/250 = 1.6 rounds to 2, so hi/lo = 200 < 250; level = 250 (the nominal rho) = baseline."""
    sub = make_subset(labels, "cifar10", "step", 400, rho=250, mu=0.5, seed=0)
    assert sub.counts == (2,) * 5 + (400,) * 5
    for sampler in ("partial-ros", "partial-rus"):
        assert target_counts(sub.counts, sampler, 250) == list(sub.counts)
        assert target_counts(sub.counts, sampler, 200) == list(sub.counts)
        with pytest.raises(ValueError, match="level=400"):
            target_counts(sub.counts, sampler, 400)


@pytest.mark.parametrize("level", [None, 0.5, 0, -1, float("nan"), 2000, float("inf")])
@pytest.mark.parametrize("sampler", ["partial-ros", "partial-rus"])
def test_bad_level(labels, rho1000, sampler, level):
    with pytest.raises(ValueError, match=f"level={level!r}"):
        SamplingPlan(rho1000, labels, sampler, level=level)
    with pytest.raises(ValueError, match=f"level={level!r}"):
        SamplingPlan.check_level(sampler, list(rho1000.counts), level)


# --------------------------------------------------------------------------- weighted

def test_weighted_frequencies(labels, small):
    """P(example) is proportional to its class weight, so class c is drawn with probability
    w_c n_c / sum_k w_k n_k. 400 epochs x 550 draws = 220,000 draws: a class frequency has a standard
    deviation below 0.0011, so a tolerance of 0.006 is over 5 sd."""
    n = np.asarray(small.counts, dtype=float)
    for w in (1 / n, np.arange(1, 11, dtype=float), np.ones(10)):
        plan = SamplingPlan(small, labels, "weighted", class_weights=tuple(w), seed=0)
        assert plan.epoch_size == 550
        draws = np.concatenate([plan.epoch(e) for e in range(400)])
        freq = np.bincount(labels[draws], minlength=10) / len(draws)
        expected = w * n / np.sum(w * n)
        np.testing.assert_allclose(freq, expected, atol=0.006)
    # inverse-frequency weights balance the classes: 0.1 each
    plan = SamplingPlan(small, labels, "weighted", class_weights=tuple(1 / n), seed=0)
    draws = np.concatenate([plan.epoch(e) for e in range(400)])
    np.testing.assert_allclose(np.bincount(labels[draws], minlength=10) / len(draws), 0.1, atol=0.006)


def test_weighted_zero_weight_class_never_drawn(labels, small):
    w = (0.0,) + (1.0,) * 9
    plan = SamplingPlan(small, labels, "weighted", class_weights=w, seed=0)
    draws = np.concatenate([plan.epoch(e) for e in range(20)])
    assert not np.any(labels[draws] == 0)
    assert set(draws.tolist()) <= set(small.indices.tolist())


@pytest.mark.parametrize("w", [None, (1.0,) * 9, (1.0,) * 11, (-1.0,) + (1.0,) * 9, (0.0,) * 10,
                               (float("nan"),) + (1.0,) * 9, (1.0,) * 9 + (float("nan"),),
                               (float("inf"),) + (1.0,) * 9])
def test_bad_weights(labels, small, w):
    with pytest.raises(ValueError, match="class_weights="):
        SamplingPlan(small, labels, "weighted", class_weights=w)


# --------------------------------------------------------------------------- determinism and the stream

@pytest.mark.parametrize("sampler", ["baseline", "ros", "rus", "weighted"])
def test_epochs_differ_but_deterministic(labels, small, sampler):
    kw = {"class_weights": (1.0,) * 10} if sampler == "weighted" else {}
    a = SamplingPlan(small, labels, sampler, seed=4, **kw)
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    e0, e1 = a.epoch(0), a.epoch(1)
    assert np.array_equal(np.random.get_state()[1], state)          # the global RNG is not touched
    assert not np.array_equal(e0, e1)
    b = SamplingPlan(small, labels, sampler, seed=4, **kw)
    np.random.seed(123)
    assert np.array_equal(b.epoch(0), e0) and np.array_equal(b.epoch(1), e1)
    assert not np.array_equal(SamplingPlan(small, labels, sampler, seed=5, **kw).epoch(0), e0)
    assert not np.array_equal(SamplingPlan(small, labels, sampler, seed=4, stream_id=2, **kw).epoch(0), e0)


@pytest.mark.parametrize("sampler", ["ros", "rus", "baseline"])
def test_stream_crosses_epochs_without_loss(labels, small, sampler):
    plan = SamplingPlan(small, labels, sampler, seed=2)
    sizes = [7, 64, 1, 300, 0, 999, 64, 64, 1234, 3]
    stream = plan.stream()
    taken = [stream.take(k) for k in sizes]
    assert [len(t) for t in taken] == sizes
    got = np.concatenate(taken)
    epochs = np.concatenate([plan.epoch(e) for e in range(len(got) // plan.epoch_size + 2)])
    assert np.array_equal(got, epochs[:len(got)])
    # batches(): fixed-size batches over the same stream; a later start epoch skips ahead
    gen = plan.batches(64)
    batches = np.concatenate([next(gen) for _ in range(40)])
    assert np.array_equal(batches, epochs[:len(batches)])
    later = plan.stream(start_epoch=2).take(plan.epoch_size + 5)
    assert np.array_equal(later, np.concatenate([plan.epoch(2), plan.epoch(3)])[:plan.epoch_size + 5])


# --------------------------------------------------------------------------- phases and names

def test_phases_every_method():
    """The paper's methods (and partial sampling) keep their samplers; the registry holds each method once."""
    expected = {
        "baseline": ("baseline",), "ros": ("ros",), "rus": ("rus",),
        "two-phase-ros": ("ros", "baseline"), "two-phase-rus": ("rus", "baseline"),
        "partial-ros": ("partial-ros",), "partial-rus": ("partial-rus",),
    }
    assert set(M.names("paper")) | set(M.names("partial")) == set(expected)
    for method, ph in expected.items():
        assert tuple(p.sampler for p in M.get(method).phases) == ph
    for spec in M.SPECS.values():
        assert all(p.sampler in SAMPLERS for p in spec.phases)
    two = M.get("two-phase-ros").phases[1]
    assert two.only_last and two.lr_scale == 0.1 and not two.reinit_last


@pytest.mark.parametrize("method", ["thresholding", "two-phase-weighted", "ROS", ""])
def test_unknown_method(method):
    with pytest.raises(ValueError, match=f"method {method!r}"):
        M.get(method)


def test_unknown_sampler(labels, small):
    with pytest.raises(ValueError, match="'smote'"):
        SamplingPlan(small, labels, "smote")
    with pytest.raises(ValueError, match="'smote'"):
        target_counts(small.counts, "smote")
