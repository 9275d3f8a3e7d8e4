"""One trial of the study: a config in, a `NetworkResult` (imbalance_core/result.py) out. Also the one-trial CLI.

    python -m imbalance_core.trial --dataset mnist --data-dir DIR --imbalance step --rho 100 --mu 0.5 \
        --method ros --seed 0 [--iterations N] [--device cpu|cuda]

`run_trials(configs)` trains several networks of one shape at once (a "pack": the seeds or methods
of a grid cell); `run_trial(config)` is the pack of one. A two-phase network in a pack shares its
first phase with the plain ROS/RUS network of the same subset and seed when both are asked for.

A pack runs top to bottom in named steps (`run_trials`): `Resume.of` (what a checkpoint says is finished),
`prepare_pack` (device, data, each network's spec and subset, and `plan_pack`'s plan: which phase-1 networks,
by `phase1_key`, and which phase 2s), `train_phase1` for each group of `phase1_kinds`, `train_phase2` for each
group of `phase2_kinds` (each from its `Phase1Net`; `packing.halve_on_oom` cuts a kind into groups of the
stack size, halved when one runs out of GPU memory), and `finish_step` after each, which builds each finished
network's `network_result` and hands it to on_progress. Within a step `fit` trains and `score` scores the
test set. Phase 2 of LeNet-5 on in-memory arrays trains its heads on cached features instead (a
`frozen.FeatureCache` as the batch source of `fit`, where that is exact).
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
from .imbalance import PROFILES, Subset, class_counts, make_subset
from .loaders import BACKENDS, InMemoryDataset, TensorLoader, TorchLoader, eval_batches
from . import losses as L
from . import methods as M
from .metrics import evaluate, posthoc
from .numerics import Numerics, configure as configure_numerics
from .result import BEST_POSTHOC, NetworkResult
from . import specs as S
from .models import MODELS, build_model, reinit_last
from .preprocess import ImageFiles, array_data, imagenet_transforms
from .sampling import LEVEL_SAMPLERS, SamplingPlan
from .train import PhaseState, Schedule, StackedNets, TrainStats, predict, schedule_for, train


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
    level: float | None = None        # a method that needs_level (partial-ros/rus): the imbalance ratio left
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
        for p in spec.phases:
            if p.sampler in LEVEL_SAMPLERS:
                SamplingPlan.check_level(p.sampler, counts, config.level)
    elif config.level is not None:
        raise ValueError(f"level={config.level!r} is not allowed for method={config.method!r}: none of its phases "
                         f"samples to a level (the samplers that do: {', '.join(LEVEL_SAMPLERS)}); leave it None")
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


def _loader(backend: str, ds, train_data, plans, schedule: Schedule, device, iterations: int, start: int = 0):
    """The training batches of `plans` on `device`; start: the iterations a resumed phase trained already."""
    if backend == "tensor":
        if train_data is None:
            raise ValueError(f"loader='tensor' needs an in-memory dataset; {ds.name!r} is decoded from files")
        return TensorLoader(train_data.to(device), plans, schedule.batch_size, iterations, start=start)
    if backend == "torch":
        if train_data is None:
            dataset = ImageFiles(ds.train_files, ds.train_y, imagenet_transforms(train=True))
            workers = min(4, os.cpu_count() or 1)
            return TorchLoader(dataset, plans, schedule.batch_size, iterations, device, num_workers=workers,
                               start=start)
        return TorchLoader(InMemoryDataset(train_data.x, train_data.y), plans, schedule.batch_size, iterations,
                           device, to_input=train_data.to_input, start=start)
    if backend == "ffcv":
        from . import ffcv_data
        return ffcv_data.train_loader(ds, plans, schedule.batch_size, iterations, device, start=start)
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
    numerics: Numerics                   # TF32, the device's name, torch/CUDA versions (numerics.configure)
    limit: packing.StackLimit            # the stack size as it trains: halved on out-of-memory (halve_on_oom)


@dataclass(frozen=True)
class PhaseCheckpoints:
    """Checkpoints inside a phase (run_trials' checkpoint_every_s, on_phase and in_phase): every `every_s`
    seconds of a group's training, its PhaseState goes to on_phase(group, state); a group named in `given`
    resumes from its state. A group is named by its phase and members (`group_name`), so a state is only
    taken up by the same networks trained together again (another stack size starts the phase over)."""
    every_s: float | None = None
    on_phase: object = None              # on_phase(group name, PhaseState), or None: no checkpoints in a phase
    given: dict = dataclasses.field(default_factory=dict)   # group name -> PhaseState

    @staticmethod
    def group_name(phase: int, members: list) -> str:
        """A group of phase 1 by its phase1_keys, of phase 2 by the networks' indices in the pack."""
        return json.dumps([phase, list(members)])

    def fit_args(self, name: str) -> dict:
        """fit's resume / checkpoint_every_s / on_checkpoint for group `name`."""
        hook = None if self.on_phase is None else (lambda state: self.on_phase(name, state))
        return {"resume": self.given.get(name), "checkpoint_every_s": self.every_s, "on_checkpoint": hook}


def fit(pack: Pack, models: list[torch.nn.Module], plans: list[SamplingPlan], *, lr_scale: float = 1.0,
        only_last: bool = False, losses=None, log=None, source: frozen.FeatureCache | None = None,
        resume: PhaseState | None = None, checkpoint_every_s: float | None = None,
        on_checkpoint=None) -> tuple[StackedNets, list[TrainStats], tuple]:
    """Train `models` on their `plans` as one group (vmap-stacked when more than one) for the pack's schedule.

    losses: one loss function per model (None: cross-entropy for all).
    source: where the batches come from: None, the pack's training images (its loader); a FeatureCache, the
    cached features of phase-1 networks, on which `models` (its `heads`) train (frozen.py).
    resume, checkpoint_every_s, on_checkpoint: checkpoints inside the phase (train's; the loader starts at
    resume.done). Not on cached features: that phase (a head, seconds) starts over.
    Returns the trained networks, each network's TrainStats (its share of the group's time, the cache's
    included) and the wall-clock (start, end) of the training loop (time.time() s).
    """
    K, s = len(models), pack.schedule
    if source is None:
        nets = StackedNets(models, pack.device, channels_last=(K == 1 and pack.device.type == "cpu"),
                           noise_seeds=[(p.seed, p.stream_id) for p in plans])   # dropout: each network's own
        loader = _loader(pack.backend, pack.ds, pack.train_data, plans, s, pack.device, s.iterations,
                         start=resume.done if resume is not None else 0)
    else:
        nets = StackedNets(models, pack.device, bias_lr_mult=source.bias_lr_mult)
        loader = source.loader(plans, s.batch_size, s.iterations)
        resume = on_checkpoint = None
    st = train(nets, loader, s, lr_scale=lr_scale, only_last=only_last,
               log_every=max(1, s.iterations // 10) if log else 0, log=log or print, losses=losses,
               resume=resume, checkpoint_every_s=checkpoint_every_s, on_checkpoint=on_checkpoint)
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


# --------------------------------------------------------------------------- the pack trainer, step by step

@dataclass
class Phase1Net:
    """A trained phase-1 network, which the phase 2s of its pack start from: its state, the stats and wall-clock
    window of its training, and its test-set features where phase 1 kept them (phase 2 on cached features).
    `checkpoint()` is what on_progress hands out; `from_checkpoint` reads it back (run_trials' phase1=)."""
    state: dict[str, torch.Tensor]
    stats: TrainStats
    window: tuple[float, float]
    features: torch.Tensor | None = None
    stack: int = 1                       # networks trained at once in its group

    def checkpoint(self) -> dict:
        return {"state_dict": self.state, "stats": dataclasses.asdict(self.stats), "window": list(self.window),
                "stack": self.stack}

    @classmethod
    def from_checkpoint(cls, d: dict) -> "Phase1Net":
        return cls(d["state_dict"], TrainStats(**d["stats"]), tuple(d.get("window", (math.nan, math.nan))),
                   stack=int(d.get("stack", 1)))


@dataclass
class Trained:
    """One network at the end of its last phase: what its NetworkResult is built from."""
    scores: np.ndarray                   # test-set softmax scores (N, C)
    stats: list[TrainStats]              # one per phase it trained (phase 1 possibly shared)
    window: tuple[float, float]          # wall clock: its phase 1's start to its last phase's end
    state: dict[str, torch.Tensor]
    features: torch.Tensor | None        # its test-set features where at hand (else computed for tau-norm)
    stack: int = 1                       # the smallest group it trained in (its phases')


@dataclass(frozen=True)
class Resume:
    """What a checkpoint of a pack that was cut off gives back (run_trials' done= and phase1=)."""
    done: dict[int, NetworkResult]       # networks already finished: not trained again
    phase1: dict[str, dict]              # phase1_key -> Phase1Net.checkpoint() of phase-1 networks trained before

    @classmethod
    def of(cls, configs: list[TrialConfig], done: dict | None, phase1: dict | None) -> "Resume":
        done = {int(i): NetworkResult.from_dict(r) for i, r in (done or {}).items()}
        bad = sorted(set(done) - set(range(len(configs))))
        if bad:
            raise ValueError(f"done= names networks {bad} that are not in the pack (0..{len(configs) - 1})")
        return cls(done, dict(phase1 or {}))

    def todo(self, n: int) -> list[int]:
        return [i for i in range(n) if i not in self.done]

    def phase1_nets(self, plan: PackPlan) -> dict[str, Phase1Net]:
        """The given phase-1 networks that only two-phase networks still need (a plain network that still has to
        finish trains its phase 1 again, a state given for it or not)."""
        two = plan.two_phase
        return {k: Phase1Net.from_checkpoint(self.phase1[k]) for k, members in plan.phase1.items()
                if k in self.phase1 and all(i in two for i in members)}


@dataclass
class Progress:
    """A pack's progress as run_trials reports it, kept by its callbacks (`finished`: on_progress; `phase`:
    on_phase) and given back to resume (`resume_args`). A sweep writes it into each checkpoint
    (sweeps.checkpoint.PackProgress); benchmarks/gpu_check.py keeps it in memory."""
    configs: list[TrialConfig]
    done: dict[int, dict] = dataclasses.field(default_factory=dict)       # index -> result dict
    phase1: dict[str, dict] = dataclasses.field(default_factory=dict)     # phase1_key -> Phase1Net.checkpoint()
    in_phase: dict[str, dict] = dataclasses.field(default_factory=dict)   # group -> PhaseState.to_dict() (one at most)

    def finished(self, results: dict, states: dict[str, dict], **tags) -> None:
        """A step ended (on_progress): its finished networks' results (with `tags`, e.g. the node), the phase-1
        states it trained; phase-1 states no unfinished network needs are dropped, and so is the state inside
        the phase that just ended."""
        for i, r in results.items():
            self.done[i] = {**r.to_dict(), **tags}
        self.phase1.update(states)
        needed = {phase1_key(c) for i, c in enumerate(self.configs)
                  if i not in self.done and M.get(c.method).two_phase}
        for k in [k for k in self.phase1 if k not in needed]:
            del self.phase1[k]
        self.in_phase.clear()

    def phase(self, group: str, state) -> None:
        """A checkpoint inside a phase (on_phase): the group's state replaces any earlier one."""
        self.in_phase.clear()
        self.in_phase[group] = state.to_dict()

    def resume_args(self) -> dict:
        """run_trials' done=, phase1= and in_phase= from this progress."""
        return {"done": self.done, "phase1": self.phase1, "in_phase": self.in_phase}


@dataclass(frozen=True)
class PackRun:
    """A pack as it trains: its configs and plan, what its networks share (`pack`), each network's spec and
    training subset, the training and test labels. Built by `prepare_pack`."""
    configs: list[TrialConfig]
    pack: Pack
    plan: PackPlan
    two: frozenset[int]                  # the networks with a phase 2
    specs: dict[int, M.MethodSpec]
    subsets: dict[int, Subset]
    labels: np.ndarray                   # of the training set
    y_test: np.ndarray
    cached_phase2: bool                  # a phase 2 of only the last layer(s) runs on cached features (frozen.py)
    t_start: float                       # time.perf_counter() when the pack started (pack_seconds)

    @property
    def model(self) -> str:
        return self.configs[0].model

    def needs_phase2(self, key: str) -> bool:
        """Whether a two-phase network starts from phase-1 network `key`."""
        return any(i in self.two for i in self.plan.phase1[key])

    def network(self, i: int, phase: int, state: dict | None = None) -> torch.nn.Module:
        """Network i as its phase `phase` (1 or 2) starts: built from its seed, loaded with `state` (phase 2: its
        phase-1 network's), the last layer re-initialised where the phase says."""
        c, spec = self.configs[i], self.specs[i]
        m = build_model(c.model, self.pack.ds.num_classes, seed=c.seed, head=spec.head)
        if state is not None:
            m.load_state_dict(state)
        return reinit_last(m, c.seed) if spec.phases[phase - 1].reinit_last else m

    def sampling(self, i: int, phase: int) -> SamplingPlan:
        """What network i trains on in phase `phase`: the phase's sampler (at the config's level), on stream `phase`."""
        c = self.configs[i]
        return SamplingPlan(self.subsets[i], self.labels, sampler=self.specs[i].phases[phase - 1].sampler,
                            level=c.level, seed=c.seed, stream_id=phase)

    def loss(self, i: int, phase: int) -> L.LossFn:
        """The loss of network i in phase `phase`, with its spec's hyper-parameters."""
        spec = self.specs[i]
        return L.build(spec.phases[phase - 1].loss, self.subsets[i].counts, self.pack.schedule.iterations,
                       spec.param_dict, self.pack.device)


def _stack_size(config: TrialConfig, device: torch.device, stack: bool | None, max_stack: int | None,
                n: int, gpu_fraction: float = 1.0) -> int:
    """Networks trained at once: see run_trials' stack, max_stack and gpu_fraction."""
    stack = device.type == "cuda" if stack is None else stack
    if stack:
        stack = max_stack or (packing.auto_pack_size(config.model, config.schedule.batch_size, device, gpu_fraction)
                              if device.type == "cuda" else n)
    return int(stack) or 1


def prepare_pack(configs: list[TrialConfig], todo: list[int], stack: bool | None, max_stack: int | None,
                 cache_features: bool, gpu_fraction: float = 1.0, allow_tf32: bool = False) -> PackRun:
    """What the networks `todo` of a pack share and need: device (and its numerics), loader, data, stack size,
    each one's spec and subset, and the plan (plan_pack)."""
    c0 = configs[0]
    device, backend, schedule = resolve_device(c0.device), resolve_loader(c0), c0.schedule
    numerics = configure_numerics(device, allow_tf32)
    ds, train_data, test_data = load_prepared(c0.dataset, c0.data_dir)
    size = _stack_size(c0, device, stack, max_stack, len(configs), gpu_fraction)
    pack = Pack(ds, train_data, test_data, backend, schedule, device, size, numerics,
                packing.StackLimit(size, device, gpu_fraction))
    labels = np.asarray(ds.train_y)
    specs = {i: M.get(configs[i].method) for i in todo}
    subsets = {i: make_subset(labels, c.dataset, c.imbalance, c.n, c.rho, c.mu, c.seed)
               for i, c in ((i, configs[i]) for i in todo)}
    y_test = np.asarray(ds.test_y if test_data is None else test_data.y.numpy())
    t_start = time.perf_counter()
    plan = plan_pack(configs, todo)
    return PackRun(configs, pack, plan, frozenset(plan.two_phase), specs, subsets, labels, y_test,
                   cache_features and frozen.can_cache(MODELS[c0.model], backend), t_start)


def phase1_kinds(run: PackRun, skip) -> list[list[str]]:
    """The phase-1 networks to train (those not in `skip`), by kind: a stacked group holds one architecture and
    one training setting (a cosine head, ldam-drw, stacks only with cosine heads; only_last and lr_scale apply
    to a whole group). run_trials trains each kind in groups of at most the pack's stack (packing.halve_on_oom:
    halved when a group runs out of GPU memory)."""
    kinds: dict[object, list[str]] = {}
    for k, members in run.plan.phase1.items():
        if k not in skip:
            spec = run.specs[members[0]]
            p = spec.phases[0]
            kinds.setdefault((spec.head, p.only_last, p.lr_scale) if run.pack.stack > 1 else "", []).append(k)
    return list(kinds.values())


def train_phase1(run: PackRun, keys: list[str], log=None, checkpoints: PhaseCheckpoints = PhaseCheckpoints()
                 ) -> tuple[dict[str, Phase1Net], dict[int, Trained]]:
    """Phase 1 of the networks `keys` as one group (each trained once, for every network that starts from it),
    scored on the test set: each one's Phase1Net, and the networks that end with phase 1 (no phase 2).
    checkpoints: inside the phase (PhaseCheckpoints), the group named by `keys`."""
    reps = [run.plan.phase1[k][0] for k in keys]          # a representative network of each phase-1 network
    p = run.specs[reps[0]].phases[0]                      # the group's setting (phase1_kinds)
    keep = run.cached_phase2 and len(keys) == 1 and run.needs_phase2(keys[0])
    nets, stats, window = fit(run.pack, [run.network(i, 1) for i in reps], [run.sampling(i, 1) for i in reps],
                              lr_scale=p.lr_scale, only_last=p.only_last, log=log,
                              losses=[run.loss(i, 1) for i in reps],
                              **checkpoints.fit_args(PhaseCheckpoints.group_name(1, keys)))
    scores, feats = score(run.pack, nets, keep_features=keep)
    trained, plain = {}, {}
    for n, (k, state) in enumerate(zip(keys, nets.state_dicts())):
        trained[k] = Phase1Net(state, stats[n], window, feats, stack=len(keys))
        for i in run.plan.phase1[k]:
            if i not in run.two:
                plain[i] = Trained(scores[n], [stats[n]], window, state, feats, stack=len(keys))
    return trained, plain


def phase2_kinds(run: PackRun) -> list[list[int]]:
    """The two-phase networks by kind of phase 2 (and, stacked, by head); run_trials trains each kind in groups
    of at most the pack's stack, as phase 1."""
    kinds: dict[object, list[int]] = {}
    for ph, members in run.plan.phase2.items():
        for i in members:
            kinds.setdefault((ph, run.specs[i].head if run.pack.stack > 1 else ""), []).append(i)
    return list(kinds.values())


def train_phase2(run: PackRun, part: list[int], nets1: dict[str, Phase1Net],
                 checkpoints: PhaseCheckpoints = PhaseCheckpoints()) -> dict[int, Trained]:
    """Phase 2 of the networks `part` (one kind of phase 2) as one group, each from its phase-1 network: the last
    layer(s) on cached features where that is exact (frozen.py), else the whole network with the layers the
    phase trains; scored on the test set. checkpoints: inside the phase, the group named by `part` (not on
    cached features)."""
    ph, pack, s = run.specs[part[0]].phases[1], run.pack, run.pack.schedule
    starts = [nets1[phase1_key(run.configs[i])] for i in part]
    models = [run.network(i, 2, start.state) for i, start in zip(part, starts)]
    plans = [run.sampling(i, 2) for i in part]
    cache = frozen.FeatureCache(models, plans, pack.train_data, pack.test_data, s.batch_size, s.iterations,
                                pack.device, [start.features for start in starts]) \
        if run.cached_phase2 and ph.only_last else None
    nets, stats, window = fit(pack, cache.heads if cache else models, plans, lr_scale=ph.lr_scale,
                              only_last=ph.only_last and cache is None, losses=[run.loss(i, 2) for i in part],
                              source=cache, **checkpoints.fit_args(PhaseCheckpoints.group_name(2, part)))
    scores, _ = score(pack, nets, source=cache)
    if cache is not None:                                 # a head's state on top of its phase-1 network's
        head = MODELS[run.model].last_layers[-1]
        states = [{**start.state, **{f"{head}.{n}": v for n, v in h.items()}}
                  for start, h in zip(starts, nets.state_dicts())]
        feats = [start.features for start in starts]
    else:
        states, feats = nets.state_dicts(), [None] * len(part)
    return {i: Trained(scores[j], [start.stats, stats[j]], (start.window[0], window[1]), states[j], feats[j],
                       stack=min(start.stack, len(part)))
            for j, (i, start) in enumerate(zip(part, starts))}


def network_result(run: PackRun, i: int, t: Trained) -> NetworkResult:
    """Network i's result: its test-set metrics (scores, post-hoc corrections), subset, training and timing."""
    c, sub, spec, pack, s = run.configs[i], run.subsets[i], run.specs[i], run.pack, run.pack.schedule
    sampled = SamplingPlan(sub, run.labels, sampler=spec.phases[0].sampler, level=c.level).counts
    f, w = _tau_norm_inputs(run.model, pack.ds.num_classes, spec, t.state, t.features, pack.test_data, pack.device)
    post = posthoc(run.y_test, t.scores, sub.priors, f, w)
    best = post.pop(BEST_POSTHOC)
    two = len(t.stats) > 1
    return NetworkResult(
        **evaluate(run.y_test, t.scores, sub.priors), posthoc=post, accuracy_posthoc_best=best,
        train_examples=int(len(sub.indices)),
        subset_digest=sub.digest,                          # the training subset's identity
        class_counts=list(sub.counts), sampled_counts=sampled, epoch_examples=int(sum(sampled)),
        iterations=t.stats[0].iterations, finetune_iterations=t.stats[1].iterations if two else 0,
        finetune_on=("cached features" if run.cached_phase2 and spec.phases[-1].only_last else "whole network")
        if two else "",
        batch_size=s.batch_size, base_lr=s.base_lr,
        train_seconds=sum(x.seconds for x in t.stats),     # this network's share of the pack's time
        started_at=t.window[0], ended_at=t.window[1],      # its training loop (two-phase: to phase 2's end)
        images_per_second=t.stats[0].images_per_second, final_loss=t.stats[-1].final_loss[0],
        pack_size=len(run.configs), pack_seconds=time.perf_counter() - run.t_start,   # the pack's start to now
        device=str(pack.device), loader=pack.backend, model=run.model, test_examples=int(len(run.y_test)),
        data_digest=D.digest(pack.ds), stack_size=t.stack, oom_splits=pack.limit.splits,
        **dataclasses.asdict(pack.numerics))


def finish_step(run: PackRun, trained: dict[int, Trained], states: dict[str, dict],
                on_progress=None) -> dict[int, NetworkResult]:
    """The end of a training step: the results of the networks it finished, handed with the phase-1 states it
    trained to on_progress (run_trials), the moment to checkpoint."""
    finished = {i: network_result(run, i, t) for i, t in trained.items()}
    if on_progress is not None and (finished or states):
        on_progress(dict(finished), dict(states))
    return finished


def run_trials(configs: list[TrialConfig], log=None, stack: bool | None = None,
               cache_features: bool = True, *, done: dict[int, NetworkResult | dict] | None = None,
               phase1: dict[str, dict] | None = None, on_progress=None,
               max_stack: int | None = None, gpu_fraction: float = 1.0,
               allow_tf32: bool = False, checkpoint_every_s: float | None = None, on_phase=None,
               in_phase: dict[str, PhaseState | dict] | None = None) -> list[NetworkResult]:
    """Train and evaluate every config of a pack (same dataset and schedule); one NetworkResult each.

    stack: train the pack's networks as one vmap-stacked model (default on CUDA, where it pays) or one
    after another (default on CPU, where stacking measured no faster; the pack still shares one process,
    one dataset load and one set of test batches).
    max_stack: when stacking, at most this many networks at once (default: on CUDA as many as this
    device's memory holds, packing.auto_pack_size, decided here on the machine that trains them; on CPU
    the whole pack); the pack trains in groups of that size. A group that runs out of GPU memory is halved
    and trained again (packing.halve_on_oom; each network records `oom_splits` and its `stack_size`).
    gpu_fraction: the share of the GPU this pack may use (Ray's `gpu` resource of the trial, e.g. 0.5): the
    stack is sized from that share of the memory.
    allow_tf32: TF32 convolutions and matmuls on CUDA (default off: FP32, as the published results;
    numerics.configure, also cuDNN deterministic).
    cache_features: run phase 2 of two-phase methods on cached features where that is exact
    (imbalance_core/frozen.py; LeNet-5 on in-memory arrays); False fine-tunes the whole network.

    Resuming a pack that was cut off (a checkpoint per finished network):
    on_progress(finished, phase1_states): called after every training step, the moment to checkpoint:
        on CPU after each network, stacked after each phase. `finished` = {i: result} of the networks
        whose result became final in that step (the results returned at the end); `phase1_states` =
        {phase1_key: {"state_dict": ..., "stats": {...}, "window": [start, end], "stack": n}} of the phase-1
        networks trained in that step that a two-phase network of the pack still needs (CPU tensors, plain values).
    done: {i: result} of networks already finished (NetworkResults or their dicts): not trained again.
    phase1: {phase1_key: state} as on_progress gave them: those phase-1 networks are not trained again.

    Checkpoints inside a phase (a long phase cut off loses minutes, not the phase):
    on_phase(group, state): called every `checkpoint_every_s` seconds of a group's training (0: every
        iteration; None: never) with the group's name (PhaseCheckpoints.group_name: its phase and members) and
        its PhaseState (parameters, buffers, SGD state, each network's generator, iterations done; CPU
        tensors; `.to_dict()` for torch.save). The group's on_progress step supersedes it.
    in_phase: {group: state} as on_phase gave them (PhaseStates or their dicts): a group trained again with
        the same members resumes there, bit-identical to the phase run through (on in-memory data; a random
        augmentation of decoded files is not resumed). A phase 2 on cached features starts over.
    """
    configs = [c if isinstance(c, TrialConfig) else TrialConfig.from_dict(c) for c in configs]
    if not configs:
        return []
    for c in configs:
        validate(c)
    _check_pack(configs)
    resume = Resume.of(configs, done, phase1)                 # what a checkpoint says is finished
    results: dict[int, NetworkResult] = dict(resume.done)
    todo = resume.todo(len(configs))
    if not todo:
        return [results[i] for i in range(len(configs))]
    run = prepare_pack(configs, todo, stack, max_stack, cache_features, gpu_fraction, allow_tf32)
    nets1 = resume.phase1_nets(run.plan)                     # phase-1 networks given back: not trained again
    limit = run.pack.limit
    ckpt = PhaseCheckpoints(checkpoint_every_s, on_phase,
                            {k: PhaseState.from_dict(v) for k, v in (in_phase or {}).items()})
    try:
        for kind in phase1_kinds(run, skip=nets1):          # phase 1: each distinct network once, group by group
            for _, (trained, plain) in packing.halve_on_oom(lambda g: train_phase1(run, g, log, ckpt), kind, limit,
                                                             log=log):
                nets1.update(trained)
                states = {k: net.checkpoint() for k, net in trained.items() if run.needs_phase2(k)}
                results.update(finish_step(run, plain, states, on_progress))
        for kind in phase2_kinds(run):                      # phase 2: from the phase-1 networks
            for _, trained in packing.halve_on_oom(lambda g: train_phase2(run, g, nets1, ckpt), kind, limit, log=log):
                results.update(finish_step(run, trained, {}, on_progress))
    finally:
        packing.release_cached_memory()                      # a reused worker's next pack, or a GPU neighbour
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
    p.add_argument("--level", type=float, default=None,
                   help="a method that samples to a level (partial-ros/rus): imbalance ratio left after sampling")
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
