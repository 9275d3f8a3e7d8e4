"""Checkpoints inside a phase (issue 26, point 2; the training loop's part): train() hands out the phase's state
(parameters, buffers, optimiser state, each network's generator) every `checkpoint_every_s`, and a phase
resumed from one, with its loader started at the same iteration (TensorLoader's `start`: each sampling
stream skips what was drawn), ends with the same bits as the phase run through. Cut off at iterations that
fall inside and at the edge of the loader's 32-step index blocks and across an epoch."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import imbalance_core.trial as T
from imbalance_core.imbalance import make_subset
from imbalance_core.loaders import TensorLoader
from imbalance_core.models import build_model
from imbalance_core.sampling import SamplingPlan
from imbalance_core.specs import DATASETS
from imbalance_core.train import StackedNets, train

ITERS = 40                           # 40 x 16 = 640 draws: more than one epoch of the 400-image RUS set


class Cut(Exception):
    pass


def lenet_phase(seeds, *, start_state=None, stop_at=None, sampler="rus"):
    """A LeNet-5 phase on mnist-sample (step rho 10): trained through, or stopped at `stop_at` (its state
    returned), or resumed from `start_state`. Returns (state dicts, the PhaseState at the cut or None)."""
    s = dataclasses.replace(DATASETS["mnist-sample"].schedule, iterations=ITERS, batch_size=16)
    ds, tr, _ = T.load_prepared("mnist-sample", None)
    labels = np.asarray(ds.train_y)
    plans = [SamplingPlan(make_subset(labels, "mnist-sample", "step", 400, 10, 0.5, seed), labels, sampler,
                          seed=seed, stream_id=1) for seed in seeds]
    nets = StackedNets([build_model("lenet5", 10, seed=seed) for seed in seeds], "cpu",
                       channels_last=len(seeds) == 1)
    start = start_state.done if start_state is not None else 0
    cut = {}

    def grab(state):
        if state.done == stop_at:
            cut["state"] = state
            raise Cut()
    try:
        stats = train(nets, TensorLoader(tr, plans, s.batch_size, s.iterations, start=start), s,
                      resume=start_state, checkpoint_every_s=0, on_checkpoint=grab if stop_at else None)
    except Cut:
        return None, cut["state"]
    assert stats.iterations == ITERS
    return nets.state_dicts(), None


@pytest.mark.parametrize("seeds", [(3,), (3, 4)], ids=["alone", "stacked"])
@pytest.mark.parametrize("stop_at", [5, 32])
def test_a_lenet_phase_resumed_from_a_checkpoint_is_bit_identical(seeds, stop_at):
    through, _ = lenet_phase(seeds)
    _, state = lenet_phase(seeds, stop_at=stop_at)
    assert state.done == stop_at and state.optimizer["state"]          # momentum buffers are in it
    resumed, _ = lenet_phase(seeds, start_state=state)
    for a, b in zip(through, resumed):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and the cut is real: the state at the cut is not the end
    assert not torch.equal(state.params["fc2.weight"] if len(seeds) == 1 else state.params["fc2.weight"][0],
                           through[0]["fc2.weight"])


def test_an_all_cnn_c_phase_with_dropout_resumes_its_generators_too():
    sched = dataclasses.replace(DATASETS["cifar10"].schedule, iterations=6, batch_size=4)
    g = torch.Generator().manual_seed(9)
    batches = [(torch.randn(2, 4, 3, 32, 32, generator=g), torch.randint(0, 10, (2, 4), generator=g))
               for _ in range(6)]

    def run(start_state=None, stop_at=None):
        nets = StackedNets([build_model("allcnnc", 10, seed=s) for s in (1, 2)], "cpu", noise_seeds=[(1, 1), (2, 1)])
        cut = {}

        def grab(state):
            if state.done == stop_at:
                cut["state"] = state
                raise Cut()
        start = start_state.done if start_state else 0
        try:
            train(nets, batches[start:], sched, resume=start_state, checkpoint_every_s=0,
                  on_checkpoint=grab if stop_at else None)
        except Cut:
            return cut["state"]
        return nets.state_dicts()

    through = run()
    state = run(stop_at=3)
    assert state.generators is not None and len(state.generators) == 2
    resumed = run(start_state=state)
    for a, b in zip(through, resumed):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_come_at_the_interval_asked():
    seen = []
    s = dataclasses.replace(DATASETS["mnist-sample"].schedule, iterations=12, batch_size=8)
    nets = StackedNets([build_model("lenet5", 10, seed=0)], "cpu")
    data = [(torch.randn(1, 8, 1, 28, 28), torch.randint(0, 10, (1, 8))) for _ in range(12)]
    train(nets, data, s, checkpoint_every_s=0, on_checkpoint=lambda st: seen.append(st.done))
    assert seen == list(range(1, 12))                     # every iteration but the last (the phase's end)
    seen.clear()
    train(nets, data, s, checkpoint_every_s=3600, on_checkpoint=lambda st: seen.append(st.done))
    assert seen == []                                      # none within the hour
