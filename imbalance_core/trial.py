"""One trial of the study: a config in, a `NetworkResult` (imbalance_core/result.py) out. Also the one-trial CLI.

    python -m imbalance_core.trial --dataset mnist --data-dir DIR --imbalance step --rho 100 --mu 0.5 \
        --method ros --seed 0 [--iterations N] [--device cpu|cuda]

`run_trials(configs)` trains several networks of one shape at once (a "pack": the seeds or methods
of a grid cell); `run_trial(config)` is the pack of one. A two-phase network in a pack shares its
first phase with the plain ROS/RUS network of the same subset and seed when both are asked for.

A pack runs linearly: `plan_pack` says which phase-1 networks it trains (by `phase1_key`) and which
phase 2s; for each training group `fit` trains, `score` scores the test set, and each network whose
result is final becomes a `NetworkResult`. Phase 2 of LeNet-5 on in-memory arrays trains its heads on
cached features instead (a `frozen.FeatureCache` as the batch source of `fit`, where that is exact).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import datasets as D
from . import frozen, packing
from .imbalance import PROFILES, class_counts, make_subset
from .loaders import BACKENDS, InMemoryDataset, TensorLoader, TorchLoader, eval_batches
from . import losses as L
from . import methods as M
from .metrics import evaluate, posthoc
from .result import BEST_POSTHOC, NetworkResult
from . import specs as S
from .models import MODELS, build_model, reinit_last
from .preprocess import ImageFiles, array_data, imagenet_transforms
from .sampling import SamplingPlan
from .train import Schedule, StackedNets, TrainStats, predict, schedule_for, train


LOCATION_FIELDS = ("data_dir",)     # where a config's data sits: not part of what the network is


@dataclass(frozen=True)
class TrialConfig:
    """Everything that defines one trained network. A config is data: `dataclasses.asdict` round-trips it."""
    dataset: str = "mnist-sample"
    data_dir: str | None = None
    imbalance: str = "step"           # balanced | step | linear | exponential
    rho: float = 10.0
    mu: float = 0.5
    method: str = "baseline"          # a name of methods.SPECS, with optional overrides (NAME:key=value,...)
    level: float | None = None        # partial-ros / partial-rus: imbalance ratio left after sampling
    seed: int = 0
    iterations: int | None = None     # None: the paper's count for the dataset
    lr: float | None = None           # base lr; None: the paper's (CIFAR-10: searched by the grid)
    batch_size: int | None = None
    n_per_class: int | None = None    # None: the paper's n for the dataset
    device: str = "auto"              # auto | cpu | cuda
    loader: str = "auto"              # auto | tensor | torch | ffcv

    @classmethod
    def from_dict(cls, d: dict) -> "TrialConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown trial config keys {unknown}; allowed: {sorted(names)}")
        return cls(**d)

    def identity(self) -> dict:
        """The config as it identifies a network: every field but where its data sat (`data_dir`), so that
        the same network read from another folder (another machine, a clone, a cluster's /shared) is the
        same network: its trial key, MLflow params and result.json; the data is identified by its digest."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in LOCATION_FIELDS}

    @property
    def n(self) -> int:
        return int(self.n_per_class or S.get(self.dataset).n_per_class)

    @property
    def schedule(self) -> Schedule:
        return schedule_for(self.dataset, self.iterations, self.lr, self.batch_size)

    @property
    def model(self) -> str:
        return S.get(self.dataset).model


def check_device_name(device: str) -> None:
    """ValueError unless `device` names a device a trial can ask for (whether this machine has it or not)."""
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ValueError(f"device={device!r} is not allowed; choose auto, cpu, cuda or cuda:N")


def resolve_device(device: str) -> torch.device:
    """The device a trial runs on, here: 'auto' is CUDA where this machine (or the GPU Ray gave this
    worker) has one; ValueError for a CUDA device this machine lacks."""
    check_device_name(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device={device!r} was asked for but that CUDA device is not available here "
                         f"({torch.cuda.device_count()} visible); use --device cpu or auto")
    return dev


def resolve_loader(config: TrialConfig) -> str:
    if config.loader not in BACKENDS:
        raise ValueError(f"loader={config.loader!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if config.loader != "auto":
        return config.loader
    return S.get(config.dataset).default_loader




def validate(config: TrialConfig, here: bool = True) -> None:
    """Every check that needs no data: raise ValueError naming the bad value before anything runs.
    here=False: the trial runs elsewhere (a sweep's driver checks a config for its workers): the device
    is checked by name only, and resolved on the worker that runs the trial."""
    ds = S.get(config.dataset)                       # names an unknown dataset
    if ds.needs_data_dir and not config.data_dir:
        raise ValueError(f"dataset={config.dataset!r} needs a data directory (--data-dir)")
    if config.imbalance not in PROFILES:
        raise ValueError(f"imbalance={config.imbalance!r} is unknown; choose one of {', '.join(PROFILES)}")
    spec = M.get(config.method)                          # names the method or the bad hyper-parameter
    if spec.head == "cosine" and not MODELS[config.model].linear_head:
        raise ValueError(f"method={config.method!r} needs a cosine classifier on a Linear last layer; "
                         f"{config.model} (dataset {config.dataset!r}) ends in a convolution")
    if config.n_per_class is not None and int(config.n_per_class) < 1:
        raise ValueError(f"n_per_class={config.n_per_class!r} is not allowed: need an integer >= 1")
    if config.batch_size is not None and int(config.batch_size) < 1:
        raise ValueError(f"batch_size={config.batch_size!r} is not allowed: need an integer >= 1")
    counts = class_counts(config.imbalance, config.n, ds.num_classes, config.rho, config.mu)
    if spec.needs_level:
        SamplingPlan.check_level(spec.phases[0].sampler, counts, config.level)
    config.schedule  # validates iterations and lr
    if here:
        resolve_device(config.device)
    else:
        check_device_name(config.device)
    resolve_loader(config)


@functools.lru_cache(maxsize=2)
def load_prepared(dataset: str, data_dir: str | None):
    """The dataset and its preprocessed arrays, loaded once per process."""
    ds = D.load_dataset(dataset, data_dir)
    if isinstance(ds, D.FileDataset):
        return ds, None, None
    tr, te = array_data(ds)
    return ds, tr, te


def _loader(backend: str, ds, train_data, plans, schedule: Schedule, device, iterations: int):
    if backend == "tensor":
        if train_data is None:
            raise ValueError(f"loader='tensor' needs an in-memory dataset; {ds.name!r} is decoded from files")
        return TensorLoader(train_data.to(device), plans, schedule.batch_size, iterations)
    if backend == "torch":
        if train_data is None:
            dataset = ImageFiles(ds.train_files, ds.train_y, imagenet_transforms(train=True))
            workers = min(4, os.cpu_count() or 1)
            return TorchLoader(dataset, plans, schedule.batch_size, iterations, device, num_workers=workers)
        return TorchLoader(InMemoryDataset(train_data.x, train_data.y), plans, schedule.batch_size, iterations,
                           device, to_input=train_data.to_input)
    if backend == "ffcv":
        from . import ffcv_data
        return ffcv_data.train_loader(ds, plans, schedule.batch_size, iterations, device)
    raise ValueError(f"loader={backend!r} is unknown; choose one of {', '.join(BACKENDS)}")


def _test_batches(ds, test_data, device, backend: str = "torch"):
    if test_data is not None:
        return eval_batches(test_data.to(device), 1000)
    if backend == "ffcv":
        from . import ffcv_data
        return ffcv_data.test_batches(ds, device)
    files = ImageFiles(ds.test_files, ds.test_y, imagenet_transforms(train=False))
    dl = torch.utils.data.DataLoader(files, batch_size=64, num_workers=min(4, os.cpu_count() or 1))
    return ((x.to(device), y) for x, y in dl)


def _check_pack(configs: list[TrialConfig]) -> None:
    shared = ("dataset", "data_dir", "iterations", "lr", "batch_size", "n_per_class", "device", "loader")
    for name in shared:
        values = {getattr(c, name) for c in configs}
        if len(values) > 1:
            raise ValueError(f"a pack must share {name}; got {sorted(map(str, values))}")


def phase1_key(config: TrialConfig) -> str:
    """The phase-1 network a config trains first, shared by the methods whose networks are identical through
    phase 1 (`ros` and `two-phase-ros`, `baseline` and `crt` of one subset and seed: methods.phase1_key); a
    string, so that a caller can store that network's state under it (see run_trials)."""
    p, params, head = M.phase1_key(M.get(config.method))
    return json.dumps([config.imbalance, config.rho, config.mu, config.seed, config.level,
                       dataclasses.asdict(p), [list(kv) for kv in params], head])


@dataclass(frozen=True)
class PackPlan:
    """What a pack trains, from its configs alone: each distinct phase-1 network once (ROS and two-phase ROS,
    baseline and cRT of one subset and seed share it), then the phase 2 of each two-phase network."""
    phase1: dict[str, list[int]]         # phase1_key -> the networks that start from it, in pack order
    phase2: dict[M.Phase, list[int]]     # a kind of phase 2 -> the two-phase networks that run it

    @property
    def two_phase(self) -> set[int]:
        return {i for members in self.phase2.values() for i in members}

    @property
    def trainings(self) -> int:
        """Training runs of the plan (each of `iterations` steps)."""
        return len(self.phase1) + sum(map(len, self.phase2.values()))


def plan_pack(configs: list[TrialConfig], todo=None) -> PackPlan:
    """The plan of the networks `todo` (indices into `configs`; default all) of a pack."""
    todo = range(len(configs)) if todo is None else todo
    phase1: dict[str, list[int]] = {}
    phase2: dict[M.Phase, list[int]] = {}
    for i in todo:
        phase1.setdefault(phase1_key(configs[i]), []).append(i)
    for i in todo:
        spec = M.get(configs[i].method)
        if spec.two_phase:
            phase2.setdefault(spec.phases[1], []).append(i)
    return PackPlan(phase1, phase2)


@dataclass(frozen=True)
class Pack:
    """What the networks of a pack share: the data, the schedule, the device and how they train together."""
    ds: object
    train_data: object                   # loaders.ArrayData, or None for a dataset decoded from files
    test_data: object
    backend: str
    schedule: Schedule
    device: torch.device
    stack: int                           # networks trained at once, vmap-stacked (1: one after another)

    def groups(self, n: int) -> list[list[int]]:
        """The training groups of n networks: consecutive groups of <= stack."""
        return _groups(n, self.stack)


def _groups(n: int, stack: int) -> list[list[int]]:
    """Indices 0..n-1 in consecutive groups of <= stack networks trained at once (stack 1: one by one)."""
    return [list(range(i, min(n, i + stack))) for i in range(0, n, max(1, stack))]


def fit(pack: Pack, models: list[torch.nn.Module], plans: list[SamplingPlan], *, lr_scale: float = 1.0,
        only_last: bool = False, losses=None, log=None,
        source: frozen.FeatureCache | None = None) -> tuple[StackedNets, list[TrainStats], tuple]:
    """Train `models` on their `plans` as one group (vmap-stacked when more than one) for the pack's schedule.

    losses: one loss function per model (None: cross-entropy for all).
    source: where the batches come from: None, the pack's training images (its loader); a FeatureCache, the
    cached features of phase-1 networks, on which `models` (its `heads`) train (frozen.py).
    Returns the trained networks, each network's TrainStats (its share of the group's time, the cache's
    included) and the wall-clock (start, end) of the training loop (time.time() s).
    """
    K, s = len(models), pack.schedule
    if source is None:
        nets = StackedNets(models, pack.device, channels_last=(K == 1 and pack.device.type == "cpu"))
        loader = _loader(pack.backend, pack.ds, pack.train_data, plans, s, pack.device, s.iterations)
    else:
        nets = StackedNets(models, pack.device, bias_lr_mult=source.bias_lr_mult)
        loader = source.loader(plans, s.batch_size, s.iterations)
    st = train(nets, loader, s, lr_scale=lr_scale, only_last=only_last,
               log_every=max(1, s.iterations // 10) if log else 0, log=log or print, losses=losses)
    end = time.time()                              # the timed training loop ran [end - st.seconds, end]
    share = source.seconds / K if source is not None else 0.0
    stats = [TrainStats(st.iterations, st.images // K, st.seconds / K + share, [st.final_loss[j]]) for j in range(K)]
    return nets, stats, (end - st.seconds, end)


def score(pack: Pack, nets: StackedNets, keep_features: bool = False,
          source: frozen.FeatureCache | None = None) -> tuple[np.ndarray, torch.Tensor | None]:
    """Test-set softmax scores (K, N, C) of trained networks. keep_features (one network with `features`, the
    test set in memory): scored through its test-set features and head in one pass, and those features kept.
    source: the FeatureCache the networks (heads) trained on: scored on its test-set features."""
    if source is not None:
        return source.score(nets), None
    if keep_features:
        f = frozen.features(nets.module, pack.test_data.to(pack.device))
        with torch.no_grad():
            return torch.softmax(nets.module.head()(f), dim=-1).unsqueeze(0).cpu().numpy(), f
    return predict(nets, _test_batches(pack.ds, pack.test_data, pack.device, pack.backend)).numpy(), None


def _tau_norm_inputs(model_name, num_classes, spec, state, features, test_data, device):
    """(test features, head weight) for the tau-normalised post-hoc metric, or (None, None) where not at hand:
    a model without `features`, files instead of in-memory test arrays, or a cosine head (already normalised)."""
    cls = MODELS[model_name]
    if spec.head != "linear" or not hasattr(cls, "features") or test_data is None:
        return None, None
    head = cls.last_layers[-1]
    if features is None:
        m = build_model(model_name, num_classes)
        m.load_state_dict(state)
        features = frozen.features(m.to(device), test_data.to(device))
    return features.cpu().numpy(), state[f"{head}.weight"].numpy()


def run_trials(configs: list[TrialConfig], log=None, stack: bool | None = None,
               cache_features: bool = True, *, done: dict[int, NetworkResult | dict] | None = None,
               phase1: dict[str, dict] | None = None, on_progress=None,
               max_stack: int | None = None) -> list[NetworkResult]:
    """Train and evaluate every config of a pack (same dataset and schedule); one NetworkResult each.

    stack: train the pack's networks as one vmap-stacked model (default on CUDA, where it pays) or one
    after another (default on CPU, where stacking measured no faster; the pack still shares one process,
    one dataset load and one set of test batches).
    max_stack: when stacking, at most this many networks at once (default: on CUDA as many as this
    device's memory holds, packing.auto_pack_size, decided here on the machine that trains them; on CPU
    the whole pack); the pack trains in groups of that size.
    cache_features: run phase 2 of two-phase methods on cached features where that is exact
    (imbalance_core/frozen.py; LeNet-5 on in-memory arrays); False fine-tunes the whole network.

    Resuming a pack that was cut off (a checkpoint per finished network):
    on_progress(finished, phase1_states): called after every training step, the moment to checkpoint:
        on CPU after each network, stacked after each phase. `finished` = {i: result} of the networks
        whose result became final in that step (the results returned at the end); `phase1_states` =
        {phase1_key: {"state_dict": ..., "stats": {...}, "window": [start, end]}} of the phase-1 networks
        trained in that step that a two-phase network of the pack still needs (CPU tensors, plain values).
    done: {i: result} of networks already finished (NetworkResults or their dicts): not trained again.
    phase1: {phase1_key: state} as on_progress gave them: those phase-1 networks are not trained again.
    """
    configs = [c if isinstance(c, TrialConfig) else TrialConfig.from_dict(c) for c in configs]
    if not configs:
        return []
    for c in configs:
        validate(c)
    _check_pack(configs)
    done = {int(i): NetworkResult.from_dict(r) for i, r in (done or {}).items()}
    bad = sorted(set(done) - set(range(len(configs))))
    if bad:
        raise ValueError(f"done= names networks {bad} that are not in the pack (0..{len(configs) - 1})")
    phase1 = dict(phase1 or {})
    todo = [i for i in range(len(configs)) if i not in done]
    if not todo:
        return [done[i] for i in range(len(configs))]
    c0 = configs[0]
    device, backend, schedule = resolve_device(c0.device), resolve_loader(c0), c0.schedule
    ds, train_data, test_data = load_prepared(c0.dataset, c0.data_dir)
    stack = device.type == "cuda" if stack is None else stack
    if stack:
        stack = max_stack or (packing.auto_pack_size(c0.model, schedule.batch_size, device)
                              if device.type == "cuda" else len(configs))
    pack = Pack(ds, train_data, test_data, backend, schedule, device, int(stack) or 1)
    labels = np.asarray(ds.train_y)
    specs = {i: M.get(configs[i].method) for i in todo}
    subsets = {i: make_subset(labels, configs[i].dataset, configs[i].imbalance, configs[i].n, configs[i].rho,
                              configs[i].mu, configs[i].seed) for i in todo}
    y_test = np.asarray(ds.test_y if test_data is None else test_data.y.numpy())
    t_start = time.perf_counter()
    plan = plan_pack(configs, todo)
    two = plan.two_phase
    cached_phase2 = cache_features and frozen.can_cache(MODELS[c0.model], backend)

    def build(i: int) -> torch.nn.Module:
        return build_model(c0.model, ds.num_classes, seed=configs[i].seed, head=specs[i].head)

    def sampling(i: int, phase: int) -> SamplingPlan:
        if phase == 1:
            return SamplingPlan(subsets[i], labels, sampler=specs[i].phases[0].sampler, level=configs[i].level,
                                seed=configs[i].seed, stream_id=1)
        return SamplingPlan(subsets[i], labels, sampler=specs[i].phases[1].sampler, seed=configs[i].seed,
                            stream_id=2)

    results: dict[int, NetworkResult] = dict(done)
    step: tuple[dict, dict] = ({}, {})        # finished networks and phase-1 states since the last on_progress

    def progress() -> None:
        if on_progress is not None and (step[0] or step[1]):
            on_progress(dict(step[0]), dict(step[1]))
        step[0].clear()
        step[1].clear()

    def finish(i: int, scores: np.ndarray, stats: list[TrainStats], window: tuple, state: dict,
               features: torch.Tensor | None) -> None:
        """Score network i on the test set (its scores, the states and stats of its phases) as its result."""
        c, sub, spec = configs[i], subsets[i], specs[i]
        sampled = SamplingPlan(sub, labels, sampler=spec.phases[0].sampler, level=c.level).counts
        f, w = _tau_norm_inputs(c0.model, ds.num_classes, spec, state, features, test_data, device)
        post = posthoc(y_test, scores, sub.priors, f, w)
        best = post.pop(BEST_POSTHOC)
        results[i] = step[0][i] = NetworkResult(
            **evaluate(y_test, scores, sub.priors), posthoc=post, accuracy_posthoc_best=best,
            train_examples=int(len(sub.indices)),
            subset_digest=sub.digest,                          # the training subset's identity
            class_counts=list(sub.counts), sampled_counts=sampled, epoch_examples=int(sum(sampled)),
            iterations=stats[0].iterations, finetune_iterations=stats[1].iterations if len(stats) > 1 else 0,
            finetune_on=("cached features" if cached_phase2 and spec.phases[-1].only_last else "whole network")
            if len(stats) > 1 else "",
            batch_size=schedule.batch_size, base_lr=schedule.base_lr,
            train_seconds=sum(x.seconds for x in stats),       # this network's share of the pack's time
            started_at=window[0], ended_at=window[1],          # its training loop (two-phase: to phase 2's end)
            images_per_second=stats[0].images_per_second, final_loss=stats[-1].final_loss[0],
            pack_size=len(configs), pack_seconds=time.perf_counter() - t_start,   # the pack's start to this end
            device=str(device), loader=backend, model=c0.model, test_examples=int(len(y_test)),
            data_digest=D.digest(ds))

    # Phase 1: every distinct network once; one that only two-phase networks still need and whose state is
    # given (`phase1`) is not trained again.
    given = {k for k, members in plan.phase1.items() if k in phase1 and all(i in two for i in members)}
    keys = [k for k in plan.phase1 if k not in given]
    states1: dict[str, dict] = {k: phase1[k]["state_dict"] for k in given}
    stats1: dict[str, TrainStats] = {k: TrainStats(**phase1[k]["stats"]) for k in given}
    windows1: dict[str, tuple] = {k: tuple(phase1[k].get("window", (math.nan, math.nan))) for k in given}
    features1: dict[str, torch.Tensor] = {}            # test-set features, kept for phase 2 on cached features
    # A stacked group holds one architecture: a cosine head (ldam-drw) stacks only with cosine heads.
    by_head: dict[str, list[str]] = {}
    for k in keys:
        by_head.setdefault(specs[plan.phase1[k][0]].head if pack.stack > 1 else "", []).append(k)
    for ks in [[hk[j] for j in g] for hk in by_head.values() for g in pack.groups(len(hk))]:
        reps = [plan.phase1[k][0] for k in ks]          # a representative network of each phase-1 network
        keep = cached_phase2 and len(ks) == 1 and any(i in two for i in plan.phase1[ks[0]])
        nets, stats, window = fit(pack, [build(i) for i in reps], [sampling(i, 1) for i in reps], log=log,
                                  losses=[L.build(specs[i].phases[0].loss, subsets[i].counts, schedule.iterations,
                                                  specs[i].param_dict, device) for i in reps])
        scores, feats = score(pack, nets, keep_features=keep)
        for n, (k, state) in enumerate(zip(ks, nets.state_dicts())):
            states1[k], stats1[k], windows1[k] = state, stats[n], window
            if feats is not None:
                features1[k] = feats
            if any(i in two for i in plan.phase1[k]):
                step[1][k] = {"state_dict": state, "stats": dataclasses.asdict(stats[n]), "window": list(window)}
            for i in plan.phase1[k]:
                if i not in two:
                    finish(i, scores[n], [stats[n]], window, state, feats)
        progress()

    # Phase 2 (two-phase methods, cRT): the last layer(s) on a second stream, by kind of phase 2; on cached
    # features where that is exact (frozen.py), else the whole network with only the last layer(s) training.
    for ph, members in plan.phase2.items():
        for part in [[members[j] for j in g] for g in pack.groups(len(members))]:
            ks = [phase1_key(configs[i]) for i in part]
            models = []
            for i, k in zip(part, ks):
                m = build(i)
                m.load_state_dict(states1[k])
                models.append(reinit_last(m, configs[i].seed) if ph.reinit_last else m)
            plans = [sampling(i, 2) for i in part]
            cache = frozen.FeatureCache(models, plans, train_data, test_data, schedule.batch_size, schedule.iterations,
                                        device, [features1.get(k) for k in ks]) \
                if cached_phase2 and ph.only_last else None
            nets, stats, window = fit(pack, cache.heads if cache else models, plans, lr_scale=ph.lr_scale,
                                      only_last=ph.only_last and cache is None, source=cache)
            scores, _ = score(pack, nets, source=cache)
            if cache is not None:                      # a head's state on top of its phase-1 network's
                head = MODELS[c0.model].last_layers[-1]
                states = [{**states1[k], **{f"{head}.{n}": v for n, v in h.items()}}
                          for k, h in zip(ks, nets.state_dicts())]
                feats = [features1.get(k) for k in ks]
            else:
                states, feats = nets.state_dicts(), [None] * len(part)
            for j, (i, k) in enumerate(zip(part, ks)):
                finish(i, scores[j], [stats1[k], stats[j]], (windows1[k][0], window[1]), states[j], feats[j])
            progress()
    return [results[i] for i in range(len(configs))]


def run_trial(config: TrialConfig | dict, log=None) -> NetworkResult:
    """One network: train on the config's imbalanced subset with its method, evaluate on the balanced test set."""
    return run_trials([config], log=log)[0]


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m imbalance_core.trial", description=__doc__.split("\n\n")[0])
    f = {f.name: f for f in dataclasses.fields(TrialConfig)}
    p.add_argument("--dataset", default=f["dataset"].default, help=f"one of {', '.join(D.DATASETS)}")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset in its official layout")
    p.add_argument("--imbalance", default="step", help=f"one of {', '.join(PROFILES)}")
    p.add_argument("--rho", type=float, default=10.0)
    p.add_argument("--mu", type=float, default=0.5)
    p.add_argument("--method", default="baseline",
                   help=f"one of {', '.join(M.SPECS)}; hyper-parameters as NAME:key=value,... (e.g. cb-focal:gamma=2)")
    p.add_argument("--level", type=float, default=None, help="partial-ros/rus: imbalance ratio left after sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=None, help="default: the paper's count for the dataset")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--n-per-class", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--loader", default="auto", help=f"one of {', '.join(BACKENDS)}")
    p.add_argument("--quiet", action="store_true")
    a = vars(p.parse_args(argv))
    quiet = a.pop("quiet")
    return TrialConfig(**a), quiet


def main(argv=None) -> int:
    config, quiet = _parse(argv)
    try:
        validate(config)
        result = run_trial(config, log=None if quiet else (lambda s: print(s, file=sys.stderr, flush=True)))
    except (ValueError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = {"config": dataclasses.asdict(config), **result.to_dict()}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
