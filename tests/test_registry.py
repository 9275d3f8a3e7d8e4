"""The method registry is the whole truth (issue 27, point 1): every `Phase` field is honoured in every phase
(or `methods.validate` refuses the spec, naming the value and what is allowed), grids sweep a method over
levels because its spec `needs_level` (not because of its name), a new loss is one entry of the loss
registry, and adding a method as the README says (one MethodSpec in methods.SPECS) trains end to end.

Toy methods and losses are registered for one test only (monkeypatch.setitem: SPECS is keyed by the spec's
name, LOSSES by the loss's), and removed after it."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import imbalance_core.trial as T
from imbalance_core import frozen
from imbalance_core import losses as L
from imbalance_core import methods as M
from imbalance_core.imbalance import make_subset
from imbalance_core.loaders import TensorLoader, eval_batches
from imbalance_core.methods import MethodSpec, Phase
from imbalance_core.metrics import evaluate
from imbalance_core.models import build_model, reinit_last
from imbalance_core.sampling import SamplingPlan
from imbalance_core.train import StackedNets, predict, train
from imbalance_core.trial import TrialConfig, run_trials, validate
from sweeps.grids import Block, Grid, Overrides, expand

SAMPLE = dict(dataset="mnist-sample", imbalance="step", rho=10, mu=0.5, iterations=30, batch_size=16, device="cpu",
              seed=2)
CPU = torch.device("cpu")
TIMING = {"train_seconds", "images_per_second", "pack_seconds", "started_at", "ended_at"}
# "two-phase ROS, then fine-tune the last layer with LA loss (tau 2)": the method a user added the README way
ROS_LA = MethodSpec("ros-then-la", (Phase("ros"), Phase("baseline", loss="la", only_last=True, lr_scale=0.1)),
                    "beyond", "two-phase ROS with an LA-loss phase 2", params=(("tau", 2.0),))


def register(monkeypatch, spec: MethodSpec) -> MethodSpec:
    monkeypatch.setitem(M.SPECS, spec.name, spec)          # SPECS is keyed by the spec's name
    return spec


def untimed(r) -> dict:
    return {k: v for k, v in r.to_dict().items() if k not in TIMING}


# --------------------------------------------------------------------------- phase 2 reads its loss

@pytest.fixture(scope="module")
def ros_la_pack():
    """ROS, two-phase ROS and the LA-phase-2 method as one pack (one shared phase 1), whole-network phase 2 and
    the default (LeNet-5: phase 2 on cached features); the phase-1 state the pack handed out."""
    with pytest.MonkeyPatch.context() as mp:
        register(mp, ROS_LA)
        configs = [TrialConfig(**SAMPLE, method=m) for m in ("ros", "two-phase-ros", "ros-then-la")]
        states = {}
        whole = run_trials(configs, cache_features=False, on_progress=lambda fin, st: states.update(st))
        cached = run_trials(configs)
        keys = [T.phase1_key(c) for c in configs]
    return keys, whole, cached, states


def reference(cached: bool, loss: str = "la", tau: float = 2.0):
    """The LA-phase-2 network built by hand from the library's lower-level pieces: the same subset, init and
    ROS stream as phase 1, then phase 2 (stream 2, the imbalanced subset, lr x 0.1, fc2 only) with the LA loss
    of tau 2 on the phase-1 state; on cached features (frozen.FeatureCache) or the whole network.
    Returns (phase-1 state, test scores (N, C), final loss, test labels, priors)."""
    c = TrialConfig(**SAMPLE)
    s = c.schedule
    ds, tr, te = T.load_prepared(c.dataset, None)
    labels = np.asarray(ds.train_y)
    sub = make_subset(labels, c.dataset, c.imbalance, c.n, c.rho, c.mu, c.seed)
    nets = StackedNets([build_model("lenet5", 10, seed=c.seed)], CPU, channels_last=True)
    ros = SamplingPlan(sub, labels, "ros", seed=c.seed, stream_id=1)
    train(nets, TensorLoader(tr, [ros], s.batch_size, s.iterations), s)
    state1 = nets.state_dicts()[0]
    model = build_model("lenet5", 10, seed=c.seed)
    model.load_state_dict(state1)
    plan2 = SamplingPlan(sub, labels, "baseline", seed=c.seed, stream_id=2)
    fn = L.build(loss, sub.counts, s.iterations, {"tau": tau}, CPU)
    if cached:
        cache = frozen.FeatureCache([model], [plan2], tr, te, s.batch_size, s.iterations, CPU)
        heads = StackedNets(cache.heads, CPU, bias_lr_mult=cache.bias_lr_mult)
        st = train(heads, cache.loader([plan2], s.batch_size, s.iterations), s, lr_scale=0.1, losses=[fn])
        scores = cache.score(heads)[0]
    else:
        nets2 = StackedNets([model], CPU, channels_last=True)
        st = train(nets2, TensorLoader(tr, [plan2], s.batch_size, s.iterations), s, lr_scale=0.1, only_last=True,
                   losses=[fn])
        scores = predict(nets2, eval_batches(te, 1000)).numpy()[0]
    return state1, scores, st.final_loss[0], np.asarray(te.y.numpy()), sub.priors


@pytest.mark.parametrize("cached", [False, True], ids=["whole-network", "cached-features"])
def test_la_phase_2_trains_differently_from_two_phase_ros_and_equals_a_hand_built_reference(ros_la_pack, cached):
    keys, whole, cached_results, states = ros_la_pack
    ros, two, la = cached_results if cached else whole
    # the phase-2 loss is read: not the two-phase-ROS network (which the bug reported, metric for metric)
    assert la["confusion_matrix"] != two["confusion_matrix"] and la["final_loss"] != two["final_loss"]
    assert la["accuracy_thresholded"] != two["accuracy_thresholded"]
    assert la["finetune_iterations"] == 30 and la["finetune_on"] == ("cached features" if cached else "whole network")
    # ... and it is exactly the network built by hand: same phase-1 state, then an LA phase 2 (tau 2)
    state1, scores, final_loss, y, priors = reference(cached)
    assert keys[0] == keys[1] == keys[2]                                        # one phase 1 for all three
    shared = states[keys[2]]["state_dict"]
    assert all(torch.equal(shared[k], state1[k]) for k in state1)
    want = evaluate(y, scores, priors)
    for k in ("auc", "accuracy", "accuracy_thresholded", "confusion_matrix", "recall"):
        assert la[k] == want[k], k
    assert la["final_loss"] == final_loss
    # the reference's loss matters: with cross-entropy the same hand-built phase 2 is two-phase ROS
    _, ce_scores, ce_loss, _, _ = reference(cached, loss="ce")
    assert evaluate(y, ce_scores, priors)["confusion_matrix"] == two["confusion_matrix"]
    assert ce_loss == two["final_loss"]
    # the spec's tau is what phase 2's loss reads (phase 1's cross-entropy reads none: ROS's phase 1 is shared)
    assert ROS_LA.loss_params(ROS_LA.phases[1]) == {"tau": 2.0} and ROS_LA.loss_params(ROS_LA.phases[0]) == {}


# --------------------------------------------------------------------------- every Phase field, every phase

@pytest.fixture
def spy_train(monkeypatch):
    """Every train() call of trial.py: (only_last, lr_scale, first-phase params before training, loss names)."""
    calls = []
    real = T.train

    def spy(nets, loader, schedule, lr_scale=1.0, only_last=False, losses=None, **kw):
        calls.append(dict(only_last=only_last, lr_scale=lr_scale, losses=losses,
                          before={k: v.detach().clone() for k, v in nets.params.items()}))
        return real(nets, loader, schedule, lr_scale=lr_scale, only_last=only_last, losses=losses, **kw)
    monkeypatch.setattr(T, "train", spy)
    return calls


def test_phase_1_honours_only_last_lr_scale_reinit_and_loss(monkeypatch, spy_train):
    spec = register(monkeypatch, MethodSpec("probe", (Phase("ros", loss="la", only_last=True, lr_scale=2.0,
                                                            reinit_last=True),), "beyond", params=(("tau", 1.0),)))
    c = TrialConfig(**SAMPLE, method=spec.name)
    r = run_trials([c])[0]
    (call,) = spy_train
    assert call["only_last"] and call["lr_scale"] == 2.0
    assert call["losses"][0] is not L.cross_entropy
    fresh = reinit_last(build_model("lenet5", 10, seed=c.seed), c.seed).state_dict()
    plain = build_model("lenet5", 10, seed=c.seed).state_dict()
    assert torch.equal(call["before"]["fc2.weight"], fresh["fc2.weight"])          # re-initialised first
    assert not torch.equal(call["before"]["fc2.weight"], plain["fc2.weight"])
    assert r["sampled_counts"] == [400] * 10                                        # its sampler


def test_phase_2_honours_its_level_sampler_and_every_field(monkeypatch, spy_train):
    """Phase 2 samples to the config's level (here partial RUS), re-initialises, trains the whole network at its
    lr scale with its loss: a method that needs a level because of its phase 2."""
    spec = register(monkeypatch, MethodSpec(
        "ros-then-partial", (Phase("ros"), Phase("partial-rus", loss="la", lr_scale=0.5, reinit_last=True)),
        "beyond", params=(("tau", 1.0),)))
    assert spec.needs_level
    with pytest.raises(ValueError, match="level=None"):
        validate(TrialConfig(**SAMPLE, method=spec.name))
    plans = []
    real = SamplingPlan.stream

    def record(plan, *a, **kw):
        plans.append((plan.sampler, plan.level, plan.stream_id, tuple(sorted(plan.counts))))
        return real(plan, *a, **kw)
    monkeypatch.setattr(SamplingPlan, "stream", record)
    a, b = run_trials([TrialConfig(**SAMPLE, method=spec.name, level=2.0),
                       TrialConfig(**SAMPLE, method=spec.name, level=5.0)])
    # phase 2 samples to each network's level: majority classes capped at 40 x level
    assert ("partial-rus", 2.0, 2, (40,) * 5 + (80,) * 5) in plans and ("partial-rus", 5.0, 2, (40,) * 5 + (200,) * 5) \
        in plans
    phase2 = [c for c in spy_train if c["lr_scale"] == 0.5]
    assert len(phase2) == 2 and not any(c["only_last"] for c in phase2)
    assert all(c["losses"][0] is not L.cross_entropy for c in phase2)
    fresh = reinit_last(build_model("lenet5", 10, seed=SAMPLE["seed"]), SAMPLE["seed"]).state_dict()["fc2.weight"]
    assert all(torch.equal(c["before"]["fc2.weight"], fresh) for c in phase2)       # re-initialised before phase 2
    phase1 = [c for c in spy_train if c["lr_scale"] == 1.0]
    assert len(phase1) == 2 and not any(torch.equal(c["before"]["fc2.weight"], fresh) for c in phase1)
    assert a["confusion_matrix"] != b["confusion_matrix"] and a["finetune_on"] == "whole network"


# --------------------------------------------------------------------------- refused before training

def _spec(*phases, **kw) -> MethodSpec:
    return MethodSpec(kw.pop("name", "toy"), tuple(phases), kw.pop("family", "beyond"), **kw)


@pytest.mark.parametrize("spec,named", [
    (_spec(Phase("ros"), Phase("baseline", only_last=True), Phase("baseline")), "has 3 phases; 1 or 2 are supported"),
    (_spec(), "has 0 phases; 1 or 2 are supported"),
    (_spec(Phase("smote")), "sampler='smote' is not allowed; choose one of baseline, ros"),
    (_spec(Phase("weighted")), "sampler='weighted' is not allowed.*class weights"),
    (_spec(Phase("ros"), Phase("baseline", loss="focal")), "phase 2: loss='focal' is unknown; choose one of ce, la"),
    (_spec(Phase("ros"), Phase("baseline", lr_scale=0)),
     "phase 2: lr_scale=0 is not allowed; need a finite number > 0"),
    (_spec(Phase("ros", lr_scale=math.nan)), "phase 1: lr_scale=nan is not allowed"),
    (_spec(Phase("ros", lr_scale="0.1")), "phase 1: lr_scale='0.1' is not allowed"),
    (_spec(Phase("ros", only_last="yes")), "phase 1: only_last='yes' is not allowed; need True or False"),
    (_spec(Phase("ros"), Phase("baseline", reinit_last=1)), "phase 2: reinit_last=1 is not allowed"),
    (_spec(Phase("ros"), Phase("baseline"), params=(("tau", 2.0),)),
     "hyper-parameter tau=2 is read by none of its phases' losses"),
    (_spec(Phase("ros"), Phase("baseline", loss="la")), "its losses read tau, which its params do not give"),
    (_spec(Phase("baseline", loss="la"), params=(("tau", 11.0),)), r"tau=11 is out of range; allowed \[0, 10\]"),
    (_spec(Phase("ros"), head="mlp"), "head='mlp' is unknown; choose one of linear, cosine"),
    (_spec(Phase("ros"), family="mine"), "family='mine' is unknown; choose one of paper, partial, beyond"),
    (_spec(Phase("ros"), needs_level=True), "needs_level=True disagrees with its samplers"),
    (_spec(Phase("ros"), Phase("partial-ros"), needs_level=False), "needs_level=False disagrees"),
])
def test_validate_refuses_a_spec_the_trainer_would_not_honour(monkeypatch, spec, named):
    with pytest.raises(ValueError, match=named):
        M.validate(spec)
    register(monkeypatch, spec)
    with pytest.raises(ValueError, match=named):                # through the trial's own check, before training
        validate(TrialConfig(dataset="mnist-sample", method=spec.name))


def test_a_spec_registered_under_another_name_is_refused(monkeypatch):
    monkeypatch.setitem(M.SPECS, "alias", M.SPECS["ros"])
    with pytest.raises(ValueError, match=r"SPECS\['alias'\] holds 'ros'.*SPECS\[spec.name\] = spec"):
        M.get("alias")


def test_a_level_for_a_method_that_reads_none_is_refused():
    with pytest.raises(ValueError, match="level=10.0 is not allowed for method='ros': none of its phases"):
        validate(TrialConfig(dataset="mnist-sample", method="ros", level=10.0))


def test_every_registered_method_is_valid_and_needs_level_follows_its_samplers():
    for spec in M.SPECS.values():
        assert M.validate(spec) is spec
        assert spec.needs_level == any(p.sampler in ("partial-ros", "partial-rus") for p in spec.phases)
    assert {n for n, s in M.SPECS.items() if s.needs_level} == {"partial-ros", "partial-rus"}


# --------------------------------------------------------------------------- grids read needs_level

def test_a_level_swept_method_is_swept_over_levels_whatever_its_name(monkeypatch):
    spec = register(monkeypatch, MethodSpec("undersample-some", (Phase("partial-rus"),), "beyond"))
    assert spec.needs_level and not spec.name.startswith("partial-")
    grid = Grid("toy", "mnist-sample", (Block("step", (100,), (0.5,), ("baseline", "undersample-some"), (2, 10, 100),
                                              repetitions=1),), iterations=5)
    configs = expand(grid)
    assert sorted((c.method, c.level) for c in configs) == [("baseline", None), ("undersample-some", 2.0),
                                                             ("undersample-some", 10.0)]    # 100 = rho: no sampling
    narrowed = expand(grid, Overrides(methods=("undersample-some",), levels=(4,)))
    assert [(c.method, c.level) for c in narrowed] == [("undersample-some", 4.0)]
    assert M.ORDER.index("undersample-some") == len(M.SPECS) - 1                    # the registry's order, live


# --------------------------------------------------------------------------- adding a method, the README way

def test_adding_a_method_and_a_loss_as_the_readme_says_trains_end_to_end(monkeypatch):
    """README, "Methods": adding a method is adding one MethodSpec (its phases: sampler, loss, which layers
    train, lr scale, re-initialised last layer); hyper-parameters are spec fields with defaults, overridden
    by name (NAME:key=value). A new loss is one entry of losses.LOSSES (here label smoothing, `eps`)."""
    monkeypatch.setitem(L.LOSSES, "toy-smooth", None)          # removed again after this test

    @L.loss("toy-smooth", eps=L.Range(0.0, 1.0, high_inclusive=False))
    def smooth(counts, iterations, params, device):
        eps = float(params["eps"])
        return lambda logits, y, t=0: F.cross_entropy(logits, y, label_smoothing=eps)
    register(monkeypatch, MethodSpec(
        "crt-smooth", (Phase("baseline"), Phase("class-balanced", loss="toy-smooth", only_last=True,
                                                 reinit_last=True)),
        "beyond", "cRT with a label-smoothed phase 2", params=(("eps", 0.1),), label="cRT smoothed"))
    configs = [TrialConfig(**SAMPLE, method=m) for m in ("baseline", "crt", "crt-smooth", "crt-smooth:eps=0.5")]
    steps = []
    results = run_trials(configs, on_progress=lambda fin, st: steps.append(sorted(fin)))
    base, crt, smooth1, smooth5 = results
    assert steps == [[0], [1], [2], [3]]         # one phase 1 (shared by all four), then each phase 2
    for r in results:
        assert 0 <= r["accuracy"] <= 100 and 50 <= r["auc"] <= 100
    assert smooth1["finetune_iterations"] == 30 and smooth1["finetune_on"] == "cached features"
    assert len({round(r["final_loss"], 7) for r in (crt, smooth1, smooth5)}) == 3   # each its own phase-2 loss
    assert M.get("crt-smooth:eps=0.5").display == "cRT smoothed (eps=0.5)"
    with pytest.raises(ValueError, match=r"eps=1 is out of range; allowed \[0, 1\)"):
        validate(TrialConfig(dataset="mnist-sample", method="crt-smooth:eps=1"))
    # alone, each network is the one trained in the pack
    alone = run_trials([configs[3]])[0]
    assert untimed(alone) == {**untimed(smooth5), "pack_size": 1}


def test_a_loss_is_one_registry_entry_that_names_its_hyper_parameters():
    assert set(L.LOSSES) == {"ce", "la", "cb-focal", "ldam-drw"}
    assert {n: tuple(s.params) for n, s in L.LOSSES.items()} == {
        "ce": (), "la": ("tau",), "cb-focal": ("beta", "gamma"), "ldam-drw": ("max_margin", "scale", "drw_fraction",
                                                                              "beta")}
    assert L.build("ce", [1, 2], 10, {}, "cpu") is L.cross_entropy
    with pytest.raises(ValueError, match="loss 'focal' is unknown; choose one of ce, la, cb-focal, ldam-drw"):
        L.build("focal", [1, 2], 10, {}, "cpu")


def test_the_toy_methods_and_loss_are_gone_after_their_tests():
    """(Run last in this file: the registrations above were undone.)"""
    assert not {"undersample-some", "ros-then-la", "probe", "ros-then-partial", "crt-smooth", "toy"} & set(M.SPECS)
    assert "toy-smooth" not in L.LOSSES
