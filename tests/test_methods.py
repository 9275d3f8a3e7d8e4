"""The method registry and the methods beyond the paper: each loss against a hand computation on a few
logits, the class-balanced sampler by counting, cRT's shared first phase, post-hoc metrics, bad input."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from imbalance_core import losses as L
from imbalance_core import methods as M
from imbalance_core.imbalance import make_subset
from imbalance_core.metrics import (BEST_POSTHOC, LA_TAUS, TAU_NORM_TAUS, evaluate, logit_adjusted, posthoc,
                                    posthoc_name, tau_normalised)
from imbalance_core.models import NormedLinear, build_model, reinit_last
from imbalance_core.sampling import SamplingPlan
from imbalance_core.trial import TrialConfig, run_trials, validate

LOGITS = [[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]]
Y = [0, 2]
COUNTS = [16, 81, 10_000]                        # n^(1/4) = 2, 3, 10


def softmax(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def logits():
    return torch.tensor(LOGITS), torch.tensor(Y)


# ------------------------------------------------------------------------------- losses by hand

def test_la_loss_by_hand():
    pi = [c / sum(COUNTS) for c in COUNTS]
    want = []
    for z, y in zip(LOGITS, Y):
        adj = [v + 1.0 * math.log(p) for v, p in zip(z, pi)]
        want.append(-math.log(softmax(adj)[y]))
    fn = L.build("la", COUNTS, 100, {"tau": 1.0}, "cpu")
    assert fn(*logits(), 0).item() == pytest.approx(sum(want) / 2, rel=1e-6)
    # tau = 0 is plain cross-entropy
    assert L.build("la", COUNTS, 100, {"tau": 0.0}, "cpu")(*logits(), 0).item() == pytest.approx(
        L.cross_entropy(*logits()).item(), rel=1e-6)


def test_cb_focal_by_hand():
    beta, gamma = 0.9999, 1.0
    raw = [(1 - beta) / (1 - beta ** n) for n in COUNTS]
    w = [v / sum(raw) * 3 for v in raw]
    assert sum(w) == pytest.approx(3) and w[0] > w[1] > w[2]          # rarer class, larger weight
    want = []
    for z, y in zip(LOGITS, Y):
        p = softmax(z)[y]
        want.append(w[y] * (1 - p) ** gamma * -math.log(p))
    fn = L.build("cb-focal", COUNTS, 100, {"beta": beta, "gamma": gamma}, "cpu")
    assert fn(*logits(), 0).item() == pytest.approx(sum(want) / 2, rel=1e-5)
    assert torch.allclose(L.class_balanced_weights(COUNTS, beta), torch.tensor(w), rtol=1e-6)
    # gamma = 0, beta = 0: plain cross-entropy
    assert L.build("cb-focal", COUNTS, 100, {"beta": 0.0, "gamma": 0.0}, "cpu")(*logits(), 0).item() == \
        pytest.approx(L.cross_entropy(*logits()).item(), rel=1e-6)


def test_ldam_drw_by_hand():
    """Margins 0.5 x (16 / n)^(1/4) = 0.5, 1/3, 0.1; s = 30; DRW from iteration 80 of 100 (fraction 0.2)."""
    margins = [0.5, 0.5 * 2 / 3, 0.5 * 2 / 10]
    assert torch.allclose(L.ldam_margins(COUNTS, 0.5), torch.tensor(margins), rtol=1e-6)
    s, beta = 30.0, 0.9999
    per = []
    for z, y in zip(LOGITS, Y):
        zz = [v - (margins[y] if c == y else 0.0) for c, v in enumerate(z)]
        per.append(-math.log(softmax([s * v for v in zz])[y]))
    raw = [(1 - beta) / (1 - beta ** n) for n in COUNTS]
    w = [v / sum(raw) * 3 for v in raw]
    fn = L.build("ldam-drw", COUNTS, 100, {"max_margin": 0.5, "scale": s, "drw_fraction": 0.2, "beta": beta}, "cpu")
    assert fn(*logits(), 79).item() == pytest.approx(sum(per) / 2, rel=1e-5)                 # before DRW: mean
    weighted = (w[Y[0]] * per[0] + w[Y[1]] * per[1]) / (w[Y[0]] + w[Y[1]])
    assert fn(*logits(), 80).item() == pytest.approx(weighted, rel=1e-5)                     # DRW: weighted mean


def test_cosine_head_logits_lie_in_minus_one_one():
    head = NormedLinear(5, 3)
    x = torch.randn(7, 5) * 100
    out = head(x)
    assert out.shape == (7, 3) and out.abs().max() <= 1 + 1e-6
    w = head.weight / head.weight.norm(dim=1, keepdim=True)
    assert torch.allclose(out, (x / x.norm(dim=1, keepdim=True)) @ w.T, atol=1e-6)
    m = build_model("lenet5", 10, seed=0, head="cosine")
    assert isinstance(m.fc2, NormedLinear) and m.head() is m.fc2
    with pytest.raises(ValueError, match="Linear last layer"):
        build_model("allcnnc", 10, seed=0, head="cosine")


# ------------------------------------------------------------------------------- samplers and phases

def test_class_balanced_sampler_makes_every_class_equally_likely():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 5000))
    sub = make_subset(labels, "cifar10", "step", 5000, 1000, 0.5, seed=0)        # 5 x 5 and 5 x 5000
    plan = SamplingPlan(sub, labels, "class-balanced", seed=0)
    draws = np.concatenate([plan.epoch(e) for e in range(5)])                     # 5 x 25,025 draws
    freq = np.bincount(labels[draws], minlength=10) / len(draws)
    assert np.all(np.abs(freq - 0.1) < 0.005), freq                               # sd ~0.0008
    assert set(draws.tolist()) <= set(sub.indices.tolist())


def test_crt_reinitialises_only_the_last_layer():
    m = build_model("lenet5", 10, seed=0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    reinit_last(m, seed=0)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("fc2."))
    assert not torch.equal(before["fc2.weight"], after["fc2.weight"]) and torch.count_nonzero(after["fc2.bias"]) == 0
    a = math.sqrt(3 / 500)                                                         # Caffe's xavier on fc2
    assert after["fc2.weight"].abs().max() <= a and after["fc2.weight"].abs().max() > 0.9 * a


def test_registry_specs():
    assert M.phase1_key(M.get("crt")) == M.phase1_key(M.get("baseline"))          # cRT shares the baseline network
    assert M.phase1_key(M.get("two-phase-ros")) == M.phase1_key(M.get("ros"))
    assert M.phase1_key(M.get("la-loss")) != M.phase1_key(M.get("baseline"))
    assert M.phase1_key(M.get("cb-focal:gamma=2")) != M.phase1_key(M.get("cb-focal"))
    crt = M.get("crt").phases[1]
    assert crt.sampler == "class-balanced" and crt.only_last and crt.reinit_last and crt.lr_scale == 1.0
    assert M.get("la-loss").param_dict == {"tau": 1.0}
    assert M.get("cb-focal").param_dict == {"beta": 0.9999, "gamma": 1.0}
    assert M.get("ldam-drw").param_dict == {"max_margin": 0.5, "scale": 30.0, "drw_fraction": 0.2, "beta": 0.9999}
    s = M.get("cb-focal:gamma=2,beta=0.99")
    assert s.param_dict == {"beta": 0.99, "gamma": 2.0} and s.base == "cb-focal" and "gamma=2" in s.display
    assert set(M.names("beyond")) == {"la-loss", "cb-focal", "ldam-drw", "crt"}


@pytest.mark.parametrize("method,named", [
    ("focal", "'focal' is unknown"), ("la-loss:tau=-1", "tau=-1 is out of range"),
    ("la-loss:tau=11", "tau=11 is out of range"), ("cb-focal:beta=1", "beta=1 is out of range"),
    ("cb-focal:beta=-0.1", "beta=-0.1 is out of range"), ("cb-focal:gamma=-0.5", "gamma=-0.5 is out of range"),
    ("cb-focal:delta=1", "'delta=1' is not a hyper-parameter"), ("la-loss:tau=abc", "tau='abc' is not a number"),
    ("ldam-drw:drw_fraction=1.5", "drw_fraction=1.5 is out of range")])
def test_bad_method_input_is_named_before_training(method, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        validate(TrialConfig(dataset="mnist-sample", method=method))


def test_ldam_drw_refuses_a_convolutional_head():
    with pytest.raises(ValueError, match="cosine classifier"):
        validate(TrialConfig(dataset="cifar10", data_dir="/nowhere", method="ldam-drw"))


# ------------------------------------------------------------------------------- post-hoc metrics

def test_logit_adjustment_at_tau_1_is_the_papers_thresholding():
    rng = np.random.default_rng(0)
    scores = rng.dirichlet(np.ones(10) * 0.3, size=2000)
    y = rng.integers(0, 10, 2000)
    priors = rng.dirichlet(np.ones(10))
    m = evaluate(y, scores, priors)
    ph = posthoc(y, scores, priors)
    assert ph[posthoc_name("la", 1.0)] == m["accuracy_thresholded"]
    assert ph[posthoc_name("la", 1.0, "recall")] == m["recall_thresholded"]
    assert ph[posthoc_name("la", 2.0)] != m["accuracy_thresholded"]
    assert ph[BEST_POSTHOC] == max([m["accuracy"]] + [ph[posthoc_name("la", t)] for t in LA_TAUS])
    # by hand for one row: log p - tau log pi
    s, pi = np.array([[0.6, 0.3, 0.1]]), np.array([0.7, 0.2, 0.1])
    assert logit_adjusted(s, pi, 1.0)[0] == 1            # 0.6/0.7=.857, 0.3/0.2=1.5, 0.1/0.1=1 -> class 1
    assert logit_adjusted(s, pi, 0.0)[0] == 0


def test_tau_normalisation_by_hand():
    f = np.array([[1.0, 1.0]])
    w = np.array([[3.0, 0.0], [0.0, 1.0]])             # norms 3 and 1: raw logits 3 vs 1
    assert tau_normalised(f, w, 0.0)[0] == 0
    assert tau_normalised(f, w, 1.0)[0] == 0           # 1 vs 1: a tie resolves to the first class
    w2 = np.array([[3.0, 0.0], [0.0, 1.5]])            # raw 3 vs 1.5; tau 1: 1 vs 1 ... tau 0.5: 1.73 vs 1.22
    assert tau_normalised(f, w2, 0.5)[0] == 0
    w3 = np.array([[4.0, 0.0], [0.5, 1.0]])            # raw 4 vs 1.5; tau 1: 1 vs 1.342 -> class 1
    assert tau_normalised(f, w3, 1.0)[0] == 1 and tau_normalised(f, w3, 0.0)[0] == 0


# ------------------------------------------------------------------------------- trained, end to end

@pytest.fixture(scope="module")
def pack_results():
    methods = ["baseline", "crt", "la-loss", "cb-focal", "ldam-drw"]
    cs = [TrialConfig(dataset="mnist-sample", imbalance="step", rho=10, mu=0.5, method=m, iterations=40, seed=1)
          for m in methods]
    return dict(zip(methods, run_trials(cs))), cs


def test_new_methods_train_and_report_posthoc_metrics(pack_results):
    res, _ = pack_results
    for m, r in res.items():
        assert 0 <= r["accuracy"] <= 100 and 50 <= r["auc"] <= 100, m
        for tau in LA_TAUS:
            assert posthoc_name("la", tau) in r and len(r[posthoc_name("la", tau, "recall")]) == 10
        if m != "ldam-drw":                                   # cosine head: already norm-balanced, no tau-norm
            assert all(posthoc_name("taunorm", t) in r for t in TAU_NORM_TAUS), m
        else:
            assert not any(posthoc_name("taunorm", t) in r for t in TAU_NORM_TAUS)
        assert r[BEST_POSTHOC] >= r["accuracy"]
    assert res["crt"]["finetune_iterations"] == 40 and res["crt"]["finetune_on"] == "cached features"
    assert res["crt"]["accuracy"] != res["baseline"]["accuracy"]       # the retrained classifier differs
    assert len({round(r["final_loss"], 6) for r in res.values()}) == len(res)   # each trained its own loss


def test_crt_shares_the_baseline_network_of_its_pack(pack_results):
    """cRT alone (its own phase 1) equals cRT in a pack with the baseline (phase 1 shared)."""
    res, cs = pack_results
    alone = run_trials([cs[1]])[0]
    assert alone["confusion_matrix"] == res["crt"]["confusion_matrix"]
    assert alone["auc"] == pytest.approx(res["crt"]["auc"], abs=1e-9)


@pytest.mark.slow
def test_cli_runs_a_method_with_overrides():
    out = subprocess.run([sys.executable, "-m", "imbalance_core.trial", "--dataset", "mnist-sample",
                          "--method", "cb-focal:gamma=2", "--iterations", "20", "--quiet", "--device", "cpu"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["config"]["method"] == "cb-focal:gamma=2" and posthoc_name("la", 1.0) in r
    bad = subprocess.run([sys.executable, "-m", "imbalance_core.trial", "--dataset", "mnist-sample",
                          "--method", "cb-focal:gamma=-1", "--quiet"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "gamma=-1 is out of range" in bad.stderr
