"""A pack cut off mid-way resumes from its last finished network (imbalance_core.trial.run_trials'
on_progress / done / phase1): the networks already finished are not trained again, nor the shared
phase 1 of a two-phase network, and the resumed pack's results are those of an uninterrupted one.
(The Tune side, a node killed mid-pack on a multi-node cluster: tests/test_cluster_resume.py.)"""
from __future__ import annotations

import dataclasses

import pytest

from imbalance_core import frozen
from imbalance_core import trial as T
from imbalance_core.trial import TrialConfig, phase1_key, run_trials

TIMING = {"train_seconds", "images_per_second", "pack_seconds", "started_at", "ended_at"}
SAMPLE = dict(dataset="mnist-sample", imbalance="step", rho=10, mu=0.5, iterations=10, batch_size=16, device="cpu")
METHODS = ("baseline", "ros", "rus", "two-phase-ros", "two-phase-rus")


def untimed(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in TIMING}


@pytest.fixture
def count_training(monkeypatch):
    """Every train() call: (K, "phase1") on the training images, (K, "phase2") on cached features (LeNet-5's
    phase 2: its batches come from a frozen.FeatureCache)."""
    calls, caches = [], []
    real = T.train

    def spy(nets, loader, schedule, *a, **kw):
        cached = any(getattr(loader, "data", None) is data for data in caches)
        calls.append((nets.K, "phase2" if cached else "phase1"))
        return real(nets, loader, schedule, *a, **kw)
    real_init = frozen.FeatureCache.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        caches.append(self.data)
    monkeypatch.setattr(T, "train", spy)
    monkeypatch.setattr(frozen.FeatureCache, "__init__", init)
    return calls


@pytest.fixture(scope="module")
def full():
    """The five methods of one cell and seed as one CPU pack, uninterrupted, with every on_progress step."""
    configs = [TrialConfig(**SAMPLE, method=m, seed=0) for m in METHODS]
    steps = []
    results = run_trials(configs, on_progress=lambda fin, p1: steps.append((fin, p1)))
    return configs, results, steps


def test_progress_reports_each_network_once_as_it_finishes(full):
    configs, results, steps = full
    # on CPU one network per step: baseline, ros (+ its phase 1 for two-phase-ros), rus (+ phase 1), then
    # the two fine-tunings
    assert [sorted(fin) for fin, _ in steps] == [[0], [1], [2], [3], [4]]
    assert [sorted(p1) for _, p1 in steps] == [[], [phase1_key(configs[1])], [phase1_key(configs[2])], [], []]
    assert phase1_key(configs[1]) == phase1_key(configs[3]) != phase1_key(configs[2])
    for fin, _ in steps:
        for i, r in fin.items():
            assert r is results[i] or r == results[i]
    state = steps[1][1][phase1_key(configs[1])]
    assert set(state) == {"state_dict", "stats", "window", "stack"} and state["stats"]["iterations"] == 10
    assert state["stack"] == 1                                      # trained alone (CPU)
    assert state["window"][0] < state["window"][1]                 # its training window, for the MLflow run
    assert all(v.device.type == "cpu" for v in state["state_dict"].values())


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_resumed_pack_trains_only_what_was_not_finished(full, count_training, cut):
    """Killed after `cut` steps: a checkpoint holds the finished results and the phase-1 states still
    needed. The rest of the pack trains only the unfinished networks, and ends with the same results."""
    configs, results, steps = full
    done = {i: r for fin, _ in steps[:cut] for i, r in fin.items()}
    needed = {phase1_key(configs[i]) for i in range(5) if i not in done and configs[i].method.startswith("two-")}
    phase1 = {k: s for _, p1 in steps[:cut] for k, s in p1.items() if k in needed}
    again = []
    resumed = run_trials(configs, done=done, phase1=phase1, on_progress=lambda fin, p1: again.append(fin))
    trained_again = sorted(i for fin in again for i in fin)
    assert trained_again == [i for i in range(5) if i not in done]            # no finished network twice
    # training steps: phase 1 only for plain networks not yet finished; phase 2 for each two-phase one
    plain_left = [i for i in range(3) if i not in done]
    two_left = [i for i in (3, 4) if i not in done]
    phase1_needed = {phase1_key(configs[i]) for i in plain_left} | {
        phase1_key(configs[i]) for i in two_left if phase1_key(configs[i]) not in phase1}
    assert sorted(count_training) == sorted([(1, "phase1")] * len(phase1_needed) + [(1, "phase2")] * len(two_left))
    for i, (a, b) in enumerate(zip(resumed, results)):
        assert untimed(a) == untimed(b), f"network {i} ({configs[i].method}) differs after resuming at {cut}"


def test_all_done_trains_nothing_and_bad_done_is_refused(full, count_training):
    configs, results, _ = full
    assert run_trials(configs, done=dict(enumerate(results))) == results
    assert count_training == []
    with pytest.raises(ValueError, match=r"done= names networks \[7\]"):
        run_trials(configs, done={7: results[0]})
    # a stale phase-1 state is ignored for a plain network that still has to finish
    fake = {phase1_key(configs[1]): {"state_dict": {}, "stats": dataclasses.asdict(T.TrainStats(1, 1, 1.0, [0.0]))}}
    r = run_trials(configs[1:2], phase1=fake)
    assert untimed(r[0]) == {**untimed(results[1]), "pack_size": 1}


def test_stacked_pack_checkpoints_per_phase_and_resumes_after_phase_1(count_training):
    """Stacked (the CUDA default; here on CPU): one step per phase. Cut after phase 1, the resumed pack
    trains only the two fine-tunings, stacked, and ends with the uninterrupted results."""
    configs = [TrialConfig(**SAMPLE, method=m, seed=0) for m in METHODS]
    steps = []
    results = run_trials(configs, stack=True, on_progress=lambda fin, p1: steps.append((fin, p1)))
    assert [sorted(fin) for fin, _ in steps] == [[0, 1, 2], [3, 4]]
    assert sorted(steps[0][1]) == sorted({phase1_key(configs[3]), phase1_key(configs[4])}) and steps[1][1] == {}
    assert count_training == [(3, "phase1"), (2, "phase2")]
    count_training.clear()
    resumed = run_trials(configs, stack=True, done=steps[0][0], phase1=steps[0][1])
    assert count_training == [(2, "phase2")]
    assert [untimed(r) for r in resumed] == [untimed(r) for r in results]
