"""A stack of networks computes its losses in one batched call (issue 26, point 5): losses.stacked, from
each loss's `Terms`, equals each network's own loss function (value and gradient, to float rounding) for any
mix of the registry's losses and hyper-parameters; training calls it once per step instead of K times; a
loss registered without terms still trains stacked, as a loop."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from imbalance_core import losses as L
from imbalance_core.models import build_model
from imbalance_core.specs import DATASETS
from imbalance_core.train import StackedNets, train

C, B, ITERS = 10, 64, 100
COUNTS = [[500] * 5 + [5] * 5, [500] * 9 + [50], [400, 300, 200, 100, 50, 40, 30, 20, 10, 5]]
MIX = [("ce", {}, 0), ("la", {"tau": 1.0}, 0), ("la", {"tau": 2.5}, 2),
       ("cb-focal", {"beta": 0.999, "gamma": 2.0}, 1), ("cb-focal", {"beta": 0.9, "gamma": 0.0}, 2),
       ("ldam-drw", {"max_margin": 0.5, "scale": 30.0, "drw_fraction": 0.2, "beta": 0.9999}, 0),
       ("ldam-drw", {"max_margin": 0.3, "scale": 10.0, "drw_fraction": 0.5, "beta": 0.99}, 2)]


def mixed():
    return [L.build(name, COUNTS[c], ITERS, params, "cpu") for name, params, c in MIX]


@pytest.mark.parametrize("t", [0, 49, 50, 79, 80, 99])         # before, at and after each ldam-drw's DRW start
def test_the_batched_losses_equal_each_networks_own(t):
    fns = mixed()
    g = torch.Generator().manual_seed(t)
    logits = (torch.rand(len(fns), B, C, generator=g) * 2 - 1) * 3     # cosine heads' logits are in [-1, 1]
    logits[5:] /= 3
    y = torch.randint(0, C, (len(fns), B), generator=g)
    together = L.stacked(fns, "cpu")
    a = logits.clone().requires_grad_()
    got = together(a, y, t)
    got.sum().backward()
    b = logits.clone().requires_grad_()
    want = torch.stack([fn(b[k], y[k], t) for k, fn in enumerate(fns)])
    want.sum().backward()
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (t, got - want)
    assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7)
    # and it can fail: each network's own hyper-parameters matter (the two la losses, the ldam DRW start)
    assert not torch.allclose(got[1], got[2]) and len({round(v, 6) for v in got.tolist()}) == len(fns)


def test_a_loss_without_terms_makes_the_stack_loop():
    fns = mixed()[:2] + [lambda logits, y, t=0: torch.nn.functional.cross_entropy(logits, y)]
    assert L.stacked(fns, "cpu") is None


def _stack(fns, seeds=(0, 1, 2)):
    s = dataclasses.replace(DATASETS["mnist-sample"].schedule, iterations=6, batch_size=8)
    nets = StackedNets([build_model("lenet5", 10, seed=k) for k in seeds], "cpu")
    g = torch.Generator().manual_seed(5)
    data = [(torch.randn(len(seeds), 8, 1, 28, 28, generator=g), torch.randint(0, 10, (len(seeds), 8), generator=g))
            for _ in range(6)]
    train(nets, data, s, losses=fns)
    return nets.state_dicts()


def test_stacked_training_calls_the_batched_loss_once_per_step_and_trains_the_same_networks(monkeypatch):
    fns = [L.build(n, COUNTS[k], 6, p, "cpu") for k, (n, p, _) in enumerate(MIX[1:4])]
    calls = {"own": 0, "batched": 0}
    real = L.stacked

    def counting(losses, device):
        f = real(losses, device)
        if f is None:
            return None

        def g(*a):
            calls["batched"] += 1
            return f(*a)
        return g

    def own(fn):
        def h(*a):
            calls["own"] += 1
            return fn(*a)
        h.terms = fn.terms
        return h
    import imbalance_core.train as TR
    monkeypatch.setattr(TR, "stacked_losses", counting)
    batched = _stack([own(f) for f in fns])
    assert calls == {"own": 0, "batched": 6}
    # the loop (what ran before) trains the same networks, to float rounding
    looped = _stack([lambda lg, y, t=0, f=f: f(lg, y, t) for f in fns])
    assert calls["batched"] == 6
    for a, b in zip(batched, looped):
        for k in a:
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
