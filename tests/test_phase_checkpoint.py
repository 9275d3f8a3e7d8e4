"""Checkpoints inside a phase (issue 26, point 2; the training loop's part): train() hands out the phase's state
(parameters, buffers, optimiser state, each network's generator) every `checkpoint_every_s`, and a phase
resumed from one, with its loader started at the same iteration (TensorLoader's `start`: each sampling
stream skips what was drawn), ends with the same bits as the phase run through. Cut off at iterations that
fall inside and at the edge of the loader's 32-step index blocks and across an epoch."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

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

ROOT = Path(__file__).resolve().parents[1]
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


# --------------------------------------------------------------------------- the pack (run_trials, the trainable)
# A pack cut inside a phase and resumed from its checkpoints (run_trials' on_progress / on_phase, kept and
# saved by the trainable's PackProgress) ends with the results of the pack run through.

PACK = dict(dataset="mnist-sample", imbalance="step", rho=10, mu=0.5, iterations=24, batch_size=16, device="cpu")
PACK_METHODS = ("baseline", "ros", "two-phase-ros")       # phase 1: baseline, ros (shared); phase 2: 2-ph ROS
TIMING = {"train_seconds", "images_per_second", "pack_seconds", "started_at", "ended_at"}


def untimed(r) -> dict:
    return {k: v for k, v in (r if isinstance(r, dict) else r.to_dict()).items() if k not in TIMING}


def pack_configs():
    return [T.TrialConfig(**PACK, method=m, seed=0) for m in PACK_METHODS]


def run_pack(progress, cut: int | None = None, **kw):
    """run_trials with every checkpoint kept in `progress` (PackProgress, as the trainable keeps it), cut off
    (Cut) at the `cut`-th checkpoint inside a phase. Returns (results or None, [(group, done) per on_phase])."""
    calls = []

    def on_phase(group, state):
        progress.phase(group, state)
        calls.append((json.loads(group)[0], state.done))
        if len(calls) == cut:
            raise Cut()
    try:
        results = T.run_trials(progress.configs, **progress.resume_args(), checkpoint_every_s=0,
                               on_progress=progress.finished, on_phase=on_phase, **kw)
    except Cut:
        return None, calls
    return results, calls


@pytest.fixture(scope="module")
def through():
    """The pack run through: CPU one network after another, and stacked, with phase 2 on the whole network."""
    from sweeps.checkpoint import PackProgress
    out = {}
    for stack in (False, True):
        results, calls = run_pack(PackProgress(pack_configs()), stack=stack, cache_features=False)
        out[stack] = ([untimed(r) for r in results], calls)
    return out


@pytest.mark.parametrize("stack, where", [(False, "phase 1"), (False, "phase 2"), (True, "phase 1 late"),
                                          (True, "phase 2")],
                         ids=["one-by-one-phase-1", "one-by-one-phase-2", "stacked-phase-1-late", "stacked-phase-2"])
def test_a_pack_cut_inside_a_phase_resumes_there_and_ends_bit_identical(through, stack, where, tmp_path):
    from sweeps.checkpoint import PackProgress
    results, calls = through[stack]
    n1 = sum(1 for ph, _ in calls if ph == 1)
    assert (n1, len(calls) - n1) == ((2 if not stack else 1) * 23, 23)    # every iteration but each phase's last
    cut = {"phase 1": 5, "phase 1 late": n1 - 2, "phase 2": n1 + 11}[where]
    progress = PackProgress(pack_configs())
    cut_results, seen = run_pack(progress, cut, stack=stack, cache_features=False)
    assert cut_results is None and seen == calls[:cut]
    assert len(progress.in_phase) == 1                           # the group in training, at the cut
    phase, done_at = calls[cut - 1]
    # across a process boundary: the checkpoint as saved and loaded (torch.save / weights_only load)
    progress.save(tmp_path)
    again = PackProgress.load(tmp_path, pack_configs())
    resumed, after = run_pack(again, stack=stack, cache_features=False)
    assert after[0] == (phase, done_at + 1)                      # taken up where it was cut, not at 0
    assert [untimed(r) for r in resumed] == results              # every metric, bit for bit


def test_a_phase_state_of_another_group_is_not_taken_up(through):
    """Resumed with another stack size (another GPU, a halved group), a group's members differ: the state of
    the cut group is not taken up (its phase starts over) and the results are still the pack's."""
    from sweeps.checkpoint import PackProgress
    results, calls = through[True]
    progress = PackProgress(pack_configs())
    run_pack(progress, 5, stack=True, cache_features=False)            # cut in the stacked phase 1 (2 nets)
    resumed, after = run_pack(progress, stack=False, cache_features=False)   # one by one: other groups
    assert after[0] == (1, 1)
    assert [untimed(r) for r in resumed] == [{**r, "stack_size": 1} for r in through[False][0]]


KILL_CHILD = r"""
import json, os, sys, time
import torch
torch.set_num_threads(1)
from imbalance_core import trial as T
from sweeps.checkpoint import PackProgress
args = json.loads(sys.argv[1])
configs = [T.TrialConfig(**c) for c in args["configs"]]
root = args["root"]
n = [0]
def save(progress):
    n[0] += 1
    tmp = os.path.join(root, f".tmp-{n[0]:05d}")
    os.makedirs(tmp)
    progress.save(tmp)
    os.rename(tmp, os.path.join(root, f"ckpt-{n[0]:05d}"))     # whole, or not there
if args["resume_from"]:
    progress = PackProgress.load(args["resume_from"], configs)
else:
    progress = PackProgress(configs)
calls = []
def on_progress(fin, states):
    progress.finished(fin, states)
    save(progress)
def on_phase(group, state):
    progress.phase(group, state)
    save(progress)
    calls.append([json.loads(group)[0], state.done])
    if len(calls) == args["hang_at"]:
        open(os.path.join(root, "hanging"), "w").close()
        time.sleep(600)                                        # killed here
results = T.run_trials(configs, **progress.resume_args(), on_progress=on_progress, on_phase=on_phase,
                       checkpoint_every_s=0, stack=True, cache_features=False)
json.dump({"results": [r.to_dict() for r in results], "calls": calls}, open(os.path.join(root, "out.json"), "w"))
"""


@pytest.mark.slow                     # three processes: the full suite's, not the unit route's
def test_a_pack_killed_inside_a_phase_resumes_from_its_last_checkpoint_bit_identical(tmp_path):
    """A real kill (SIGKILL, mid-phase 2 of a stacked pack, after its phase-1 networks finished) of a process
    saving its checkpoints as the trainable does; a new process resumes from the last whole one. Its
    results equal those of a third process that ran the pack through (all single-threaded)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    configs = [dataclasses.asdict(c) for c in pack_configs()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def child(root, hang_at=0, resume_from=None):
        root.mkdir()
        arg = json.dumps({"configs": configs, "root": str(root), "hang_at": hang_at, "resume_from": resume_from})
        return subprocess.Popen([sys.executable, "-c", KILL_CHILD, arg], env=env, cwd=str(ROOT),
                                start_new_session=True)

    killed = child(tmp_path / "killed", hang_at=23 + 7)          # phase 1 (23 checkpoints), then 7 into phase 2
    t0 = time.time()
    while not (tmp_path / "killed" / "hanging").exists():
        assert killed.poll() is None, "the pack ended before it reached the cut"
        assert time.time() - t0 < 300
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    last = sorted((tmp_path / "killed").glob("ckpt-*"))[-1]
    from sweeps.checkpoint import PackProgress
    saved = PackProgress.load(last, pack_configs())
    assert sorted(saved.done) == [0, 1] and len(saved.phase1) == 1 and len(saved.in_phase) == 1
    assert json.loads(next(iter(saved.in_phase)))[0] == 2 and next(iter(saved.in_phase.values()))["done"] == 7
    resumed, plain = child(tmp_path / "resumed", resume_from=str(last)), child(tmp_path / "through")
    assert resumed.wait(300) == 0 and plain.wait(300) == 0
    a = json.loads((tmp_path / "resumed" / "out.json").read_text())
    b = json.loads((tmp_path / "through" / "out.json").read_text())
    assert a["calls"][0] == [2, 8]                              # phase 2 taken up after its 7th iteration
    assert [untimed(r) for r in a["results"]] == [untimed(r) for r in b["results"]]
