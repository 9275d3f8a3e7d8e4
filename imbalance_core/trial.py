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
import hashlib
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
from .metrics import evaluate
from .models import MODEL_FOR_DATASET, MODELS, build_model
from .preprocess import ImageFiles, array_data, imagenet_transforms
from .sampling import METHODS, SamplingPlan, phases
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
    method: str = "baseline"          # see sampling.METHODS
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
        return int(self.n_per_class or D.N_PER_CLASS[self.dataset])

    @property
    def schedule(self) -> Schedule:
        return schedule_for(self.dataset, self.iterations, self.lr, self.batch_size)

    @property
    def model(self) -> str:
        return MODEL_FOR_DATASET[self.dataset]


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
    # measured (benchmarks/loaders.py): tensor 15.8x the DataLoader on MNIST, FFCV 3.5x on JPEG ImageNet
    return "ffcv" if config.dataset == "imagenet" else "tensor"


NUM_CLASSES = {"mnist": 10, "mnist-sample": 10, "cifar10": 10}   # ImageNet: known once its folders are read


def validate(config: TrialConfig) -> None:
    """Every check that needs no data: raise ValueError naming the bad value before anything runs."""
    if config.dataset not in D.DATASETS:
        raise ValueError(f"dataset={config.dataset!r} is unknown; choose one of {', '.join(D.DATASETS)}")
    if config.dataset != "mnist-sample" and not config.data_dir:
        raise ValueError(f"dataset={config.dataset!r} needs a data directory (--data-dir)")
    if config.imbalance not in PROFILES:
        raise ValueError(f"imbalance={config.imbalance!r} is unknown; choose one of {', '.join(PROFILES)}")
    if config.method not in METHODS:
        raise ValueError(f"method={config.method!r} is unknown; choose one of {', '.join(METHODS)}")
    if config.n_per_class is not None and int(config.n_per_class) < 1:
        raise ValueError(f"n_per_class={config.n_per_class!r} is not allowed: need an integer >= 1")
    if config.batch_size is not None and int(config.batch_size) < 1:
        raise ValueError(f"batch_size={config.batch_size!r} is not allowed: need an integer >= 1")
    counts = class_counts(config.imbalance, config.n, NUM_CLASSES.get(config.dataset, 1000), config.rho, config.mu)
    if config.method.startswith("partial-"):
        SamplingPlan.check_level(config.method, counts, config.level)
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
                 lr_scale=1.0, only_last=False, log=None, keep_features=(), windows=None):
    """Train `models` on `plans` (stacked in one vmap, or one after another), then score the test set.

    Returns (state dicts, test scores (K, N, C), per-network TrainStats with that network's share of time,
    test-set features of the networks in `keep_features` (scored through features + head; one pass)).
    `windows`, a dict, gets each network's wall-clock (start, end) of its training loop (time.time() s).
    """
    groups = [list(range(len(models)))] if stack else [[k] for k in range(len(models))]
    states, scores, stats = [None] * len(models), [None] * len(models), [None] * len(models)
    kept = {}
    for g in groups:
        nets = StackedNets([models[k] for k in g], device, channels_last=(len(g) == 1 and device.type == "cpu"))
        loader = _loader(backend, ds, train_data, [plans[k] for k in g], schedule, device, schedule.iterations)
        st = train(nets, loader, schedule, lr_scale=lr_scale, only_last=only_last,
                   log_every=max(1, schedule.iterations // 10) if log else 0, log=log or print)
        w1 = time.time()                          # the timed training loop ran [w1 - st.seconds, w1]
        if len(g) == 1 and g[0] in keep_features:
            kept[g[0]] = f = frozen.features(nets.module, test_data.to(device))
            with torch.no_grad():
                sc = torch.softmax(nets.module.head()(f), dim=-1).unsqueeze(0).cpu().numpy()
        else:
            sc = predict(nets, _test_batches(ds, test_data, device, backend)).numpy()
        for j, (k, sd) in enumerate(zip(g, nets.state_dicts())):
            states[k], scores[k] = sd, sc[j]
            stats[k] = TrainStats(st.iterations, st.images // len(g), st.seconds / len(g), [st.final_loss[j]])
            if windows is not None:
                windows[k] = (w1 - st.seconds, w1)
    return states, np.stack(scores), stats, kept


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
    subsets = [make_subset(labels, c.dataset, c.imbalance, c.n, c.rho, c.mu, c.seed) for c in configs]
    t_start = time.perf_counter()

    stack = device.type == "cuda" if stack is None else stack
    cached_phase2 = cache_features and frozen.can_cache(MODELS[c0.model], backend)
    phase = functools.partial(_train_phase, c0, ds, train_data, test_data, backend, schedule, device, stack)

    # Phase 1: every distinct (subset, sampler, level, seed) network once.
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault((c.imbalance, c.rho, c.mu, c.seed, phases(c.method)[0], c.level), []).append(i)
    keys = list(groups)
    net_of = {i: j for j, k in enumerate(keys) for i in groups[k]}
    models = [build_model(c0.model, ds.num_classes, seed=k[3]) for k in keys]
    plans = [SamplingPlan(subsets[groups[k][0]], labels, sampler=k[4], level=k[5], seed=k[3], stream_id=1)
             for k in keys]
    two = [i for i, c in enumerate(configs) if len(phases(c.method)) == 2]
    windows1, windows2 = {}, {}
    states1, test1, stats1, features1 = phase(models, plans, log=log, windows=windows1,
                                              keep_features={net_of[i] for i in two} if cached_phase2 else ())
    scores = {i: test1[net_of[i]] for i in range(len(configs))}
    stats = {i: [stats1[net_of[i]]] for i in range(len(configs))}
    windows = {i: windows1[net_of[i]] for i in range(len(configs))}   # wall-clock (start, end) of training

    # Phase 2 (two-phase methods): fine-tune the last layer(s) on the imbalanced subset, lr x 0.1.
    if two:
        models = []
        for i in two:
            m = build_model(c0.model, ds.num_classes, seed=configs[i].seed)
            m.load_state_dict(states1[net_of[i]])
            models.append(m)
        plans = [SamplingPlan(subsets[i], labels, sampler="baseline", seed=configs[i].seed, stream_id=2) for i in two]
        w0 = time.time()
        if cached_phase2:
            test2, stats2 = frozen.finetune_heads(models, plans, train_data, test_data, schedule, device,
                                                  FINETUNE_LR_SCALE, stack,
                                                  test_features=[features1.get(net_of[i]) for i in two])
            windows2 = dict.fromkeys(range(len(two)), (w0, time.time()))
        else:
            _, test2, stats2, _ = phase(models, plans, lr_scale=FINETUNE_LR_SCALE, only_last=True, windows=windows2)
        for j, i in enumerate(two):
            scores[i] = test2[j]
            stats[i].append(stats2[j])
            windows[i] = (windows[i][0], windows2[j][1])

    y_test = np.asarray(ds.test_y if test_data is None else test_data.y.numpy())
    pack_seconds = time.perf_counter() - t_start
    results = []
    for i, c in enumerate(configs):
        sub = subsets[i]
        sampled = SamplingPlan(sub, labels, sampler=phases(c.method)[0], level=c.level).counts
        st = stats[i]
        m = evaluate(y_test, scores[i], sub.priors)
        m.update({
            "train_examples": int(len(sub.indices)),
            # the training subset's identity: sha256 of its indices into the training set (int64 LE)
            "subset_digest": hashlib.sha256(np.asarray(sub.indices, dtype="<i8").tobytes()).hexdigest(),
            "class_counts": list(sub.counts),
            "sampled_counts": sampled,
            "epoch_examples": int(sum(sampled)),
            "iterations": st[0].iterations,
            "finetune_iterations": st[1].iterations if len(st) > 1 else 0,
            "finetune_on": ("cached features" if cached_phase2 else "whole network") if len(st) > 1 else "",
            "batch_size": schedule.batch_size,
            "base_lr": schedule.base_lr,
            "train_seconds": sum(x.seconds for x in st),      # this network's share of the pack's time
            "started_at": windows[i][0],      # wall clock (time.time()) when its training began
            "ended_at": windows[i][1],        # ... and ended (two-phase: the end of its phase 2)
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
    p.add_argument("--method", default="baseline", help=f"one of {', '.join(METHODS)}")
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
