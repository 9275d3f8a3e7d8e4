"""imbalance_core.train.Schedule.lr: the three learning-rate policies of the study against their formulas
(STUDY.md, "Networks and training"), at the first iteration, at a milestone and at the last iteration.
Iterations are numbered t = 0 .. T-1 (train() sets lr(t) before the update of iteration t)."""
import pytest

from imbalance_core.specs import DATASETS
from imbalance_core.train import schedule_for

SCHEDULES = {name: spec.schedule for name, spec in DATASETS.items()}


def test_inv_policy_of_lenet5():
    """lr_t = 0.01 (1 + 1e-4 t)^-0.75 (Caffe's inv policy), a function of t only."""
    s = SCHEDULES["mnist"]
    assert (s.policy, s.iterations, s.base_lr) == ("inv", 10_000, 0.01)
    for t in (0, 1, 5_000, 9_999):
        assert s.lr(t) == pytest.approx(0.01 * (1 + 1e-4 * t) ** -0.75, rel=1e-12), t
    assert s.lr(0) == 0.01
    assert s.lr(9_999) == pytest.approx(0.0059461, rel=1e-4)        # 0.01 * 1.9999^-0.75
    short = schedule_for("mnist", iterations=300)                     # a shortened run keeps the same curve
    assert all(short.lr(t) == s.lr(t) for t in (0, 150, 299))


def test_multistep_policy_of_allcnn():
    """lr x 0.1 at 40k, 50k and 60k of 70k iterations; a shortened run scales the milestones (4/7, 5/7, 6/7)."""
    s = schedule_for("cifar10", base_lr=0.05)
    assert (s.policy, s.iterations) == ("multistep", 70_000)
    expect = {0: 0.05, 39_999: 0.05, 40_000: 0.005, 49_999: 0.005, 50_000: 5e-4, 59_999: 5e-4,
              60_000: 5e-5, 69_999: 5e-5}
    for t, lr in expect.items():
        assert s.lr(t) == pytest.approx(lr, rel=1e-12), t
    short = schedule_for("cifar10", iterations=700, base_lr=0.005)
    expect = {0: 0.005, 399: 0.005, 400: 5e-4, 499: 5e-4, 500: 5e-5, 599: 5e-5, 600: 5e-6, 699: 5e-6}
    for t, lr in expect.items():
        assert short.lr(t) == pytest.approx(lr, rel=1e-12), t


def test_linear_policy_of_resnet10():
    """lr_t = 0.1 (1 - t / T): Caffe's poly policy with power 1. It reaches 0 at t = T, one step after
    the last iteration, whose lr is 0.1 / T (as Caffe's solver: it never spends an update at lr 0)."""
    s = SCHEDULES["imagenet"]
    T = s.iterations
    assert (s.policy, T, s.base_lr) == ("linear", 320_000, 0.1)
    assert s.lr(0) == 0.1
    assert s.lr(T // 2) == pytest.approx(0.05, rel=1e-12)
    assert s.lr(T - 1) == pytest.approx(0.1 / T, rel=1e-9)
    assert s.lr(T) == 0.0
    short = schedule_for("imagenet", iterations=10)
    assert [short.lr(t) for t in range(10)] == pytest.approx([0.1 * (10 - t) / 10 for t in range(10)], rel=1e-12)
    assert all(short.lr(t) > short.lr(t + 1) for t in range(9))      # strictly decreasing


def test_unknown_policy_is_named():
    from dataclasses import replace
    with pytest.raises(ValueError, match="'cosine'"):
        replace(SCHEDULES["mnist"], policy="cosine").lr(0)
