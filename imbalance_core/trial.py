"""One trial of the study: a config in, a dict of metrics out. Also the one-trial CLI.

    python -m imbalance_core.trial --dataset mnist --data-dir DIR --imbalance step --rho 100 --mu 0.5 \
        --method ros --seed 0 [--iterations N] [--device cpu|cuda]

`run_trials(configs)` trains several networks of one shape at once (a "pack": the seeds or methods
of a grid cell); `run_trial(config)` is the pack of one. A two-phase network in a pack shares its
first phase with the plain ROS/RUS network of the same subset and seed when both are asked for.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import datasets as D
from . import frozen
from .imbalance import PROFILES, class_counts, make_subset
from .loaders import BACKENDS, InMemoryDataset, TensorLoader, TorchLoader, eval_batches
from . import losses as L
from . import methods as M
from .metrics import evaluate, posthoc
from . import specs as S
from .models import MODELS, build_model, reinit_last
from .preprocess import ImageFiles, array_data, imagenet_transforms
from .sampling import SamplingPlan
from .train import Schedule, StackedNets, TrainStats, predict, schedule_for, train

FINETUNE_LR_SCALE = 0.1           # two-phase: phase 2 base lr = base lr x 0.1 (STUDY.md)


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

    @property
    def n(self) -> int:
        return int(self.n_per_class or S.get(self.dataset).n_per_class)

    @property
    def schedule(self) -> Schedule:
        return schedule_for(self.dataset, self.iterations, self.lr, self.batch_size)

    @property
    def model(self) -> str:
        return S.get(self.dataset).model


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ValueError(f"device={device!r} is not allowed; choose auto, cpu, cuda or cuda:N")
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




def validate(config: TrialConfig) -> None:
    """Every check that needs no data: raise ValueError naming the bad value before anything runs."""
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
    resolve_device(config.device)
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


def _train_phase(c0, ds, train_data, test_data, backend, schedule, device, stack, models, plans,
                 lr_scale=1.0, only_last=False, log=None, keep_features=(), losses=None):
    """Train `models` on `plans` (stacked in one vmap, or one after another), then score the test set.

    losses: one loss function per model (None: cross-entropy for all).
    Returns (state dicts, test scores (K, N, C), per-network TrainStats with that network's share of time,
    test-set features of the networks in `keep_features` (scored through features + head; one pass)).
    """
    groups = [list(range(len(models)))] if stack else [[k] for k in range(len(models))]
    states, scores, stats = [None] * len(models), [None] * len(models), [None] * len(models)
    kept = {}
    for g in groups:
        nets = StackedNets([models[k] for k in g], device, channels_last=(len(g) == 1 and device.type == "cpu"))
        loader = _loader(backend, ds, train_data, [plans[k] for k in g], schedule, device, schedule.iterations)
        st = train(nets, loader, schedule, lr_scale=lr_scale, only_last=only_last,
                   log_every=max(1, schedule.iterations // 10) if log else 0, log=log or print,
                   losses=None if losses is None else [losses[k] for k in g])
        if len(g) == 1 and g[0] in keep_features:
            kept[g[0]] = f = frozen.features(nets.module, test_data.to(device))
            with torch.no_grad():
                sc = torch.softmax(nets.module.head()(f), dim=-1).unsqueeze(0).cpu().numpy()
        else:
            sc = predict(nets, _test_batches(ds, test_data, device, backend)).numpy()
        for j, (k, sd) in enumerate(zip(g, nets.state_dicts())):
            states[k], scores[k] = sd, sc[j]
            stats[k] = TrainStats(st.iterations, st.images // len(g), st.seconds / len(g), [st.final_loss[j]])
    return states, np.stack(scores), stats, kept


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
               cache_features: bool = True) -> list[dict]:
    """Train and evaluate every config of a pack (same dataset and schedule); one result dict each.

    stack: train the pack's networks as one vmap-stacked model (default on CUDA, where it pays) or one
    after another (default on CPU, where stacking measured no faster; the pack still shares one process,
    one dataset load and one set of test batches).
    cache_features: run phase 2 of two-phase methods on cached features where that is exact
    (imbalance_core/frozen.py; LeNet-5 on in-memory arrays); False fine-tunes the whole network.
    """
    configs = [c if isinstance(c, TrialConfig) else TrialConfig.from_dict(c) for c in configs]
    if not configs:
        return []
    for c in configs:
        validate(c)
    _check_pack(configs)
    c0 = configs[0]
    device, backend, schedule = resolve_device(c0.device), resolve_loader(c0), c0.schedule
    ds, train_data, test_data = load_prepared(c0.dataset, c0.data_dir)
    labels = np.asarray(ds.train_y)
    specs = [M.get(c.method) for c in configs]
    subsets = [make_subset(labels, c.dataset, c.imbalance, c.n, c.rho, c.mu, c.seed) for c in configs]
    t_start = time.perf_counter()

    stack = device.type == "cuda" if stack is None else stack
    cached_phase2 = cache_features and frozen.can_cache(MODELS[c0.model], backend)
    phase = functools.partial(_train_phase, c0, ds, train_data, test_data, backend, schedule, device, stack)
    build = functools.partial(build_model, c0.model, ds.num_classes)

    # Phase 1: every distinct network once (ROS and two-phase ROS, baseline and cRT share it: methods.phase1_key).
    groups: dict[tuple, list[int]] = {}
    for i, (c, spec) in enumerate(zip(configs, specs)):
        groups.setdefault((c.imbalance, c.rho, c.mu, c.seed, c.level, M.phase1_key(spec)), []).append(i)
    keys = list(groups)
    first = [groups[k][0] for k in keys]                 # a representative config of each phase-1 network
    net_of = {i: j for j, k in enumerate(keys) for i in groups[k]}
    models = [build(seed=configs[i].seed, head=specs[i].head) for i in first]
    plans = [SamplingPlan(subsets[i], labels, sampler=specs[i].phases[0].sampler, level=configs[i].level,
                          seed=configs[i].seed, stream_id=1) for i in first]
    losses = [L.build(specs[i].phases[0].loss, subsets[i].counts, schedule.iterations, specs[i].param_dict, device)
              for i in first]
    two = [i for i, spec in enumerate(specs) if spec.two_phase]
    keep = {net_of[i] for i in two} if cached_phase2 else set()
    states1, test1, stats1, features1 = phase(models, plans, log=log, keep_features=keep, losses=losses)
    scores = {i: test1[net_of[i]] for i in range(len(configs))}
    stats = {i: [stats1[net_of[i]]] for i in range(len(configs))}
    final_state = {i: states1[net_of[i]] for i in range(len(configs))}
    features = {i: features1.get(net_of[i]) for i in range(len(configs))}

    # Phase 2 (two-phase methods, cRT): the last layer(s) on a second stream, one group per kind of phase 2.
    by_phase: dict[M.Phase, list[int]] = {}
    for i in two:
        by_phase.setdefault(specs[i].phases[1], []).append(i)
    for ph, members in by_phase.items():
        models = []
        for i in members:
            m = build(seed=configs[i].seed, head=specs[i].head)
            m.load_state_dict(states1[net_of[i]])
            models.append(reinit_last(m, configs[i].seed) if ph.reinit_last else m)
        plans = [SamplingPlan(subsets[i], labels, sampler=ph.sampler, seed=configs[i].seed, stream_id=2)
                 for i in members]
        if cached_phase2 and ph.only_last:
            test2, stats2, heads2 = frozen.finetune_heads(models, plans, train_data, test_data, schedule, device,
                                                          ph.lr_scale, stack,
                                                          test_features=[features1.get(net_of[i]) for i in members])
            head = MODELS[c0.model].last_layers[-1]
            states2 = [{**states1[net_of[i]], **{f"{head}.{k}": v for k, v in h.items()}}
                       for i, h in zip(members, heads2)]
        else:
            states2, test2, stats2, _ = phase(models, plans, lr_scale=ph.lr_scale, only_last=ph.only_last)
            for i in members:
                features[i] = None
        for j, i in enumerate(members):
            scores[i] = test2[j]
            stats[i].append(stats2[j])
            final_state[i] = states2[j]

    y_test = np.asarray(ds.test_y if test_data is None else test_data.y.numpy())
    pack_seconds = time.perf_counter() - t_start
    results = []
    for i, c in enumerate(configs):
        sub, spec = subsets[i], specs[i]
        sampled = SamplingPlan(sub, labels, sampler=spec.phases[0].sampler, level=c.level).counts
        st = stats[i]
        m = evaluate(y_test, scores[i], sub.priors)
        f, w = _tau_norm_inputs(c0.model, ds.num_classes, spec, final_state[i], features[i], test_data, device)
        m.update(posthoc(y_test, scores[i], sub.priors, f, w))
        m.update({
            "train_examples": int(len(sub.indices)),
            "class_counts": list(sub.counts),
            "sampled_counts": sampled,
            "epoch_examples": int(sum(sampled)),
            "iterations": st[0].iterations,
            "finetune_iterations": st[1].iterations if len(st) > 1 else 0,
            "finetune_on": ("cached features" if cached_phase2 else "whole network") if len(st) > 1 else "",
            "batch_size": schedule.batch_size,
            "base_lr": schedule.base_lr,
            "train_seconds": sum(x.seconds for x in st),      # this network's share of the pack's time
            "images_per_second": st[0].images_per_second,
            "final_loss": st[-1].final_loss[0],
            "pack_size": len(configs),
            "pack_seconds": pack_seconds,
            "device": str(device),
            "loader": backend,
            "model": c0.model,
            "test_examples": int(len(y_test)),
        })
        results.append(m)
    return results


def run_trial(config: TrialConfig | dict, log=None) -> dict:
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
    out = {"config": dataclasses.asdict(config), **result}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
