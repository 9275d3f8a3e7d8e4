"""The Tune trainables: one trial = one pack of networks, run on a Ray worker.

    train_pack(config)       trains the pack (imbalance_core.trial.run_trials) and reports its results
    rehearse_pack(config)    the same path without training: a synthetic result of the real shape per
                             network (`--rehearse`: sizes the driver, Tune and MLflow for a cluster)

A trial's config is {"pack": [asdict(TrialConfig), ...]}. Both trainables report progress with a Tune
checkpoint after every step of the pack (CPU: each network; stacked GPU: each phase) and end with one
report `{"final": True, ...}` whose checkpoint holds every network's result as data (networks.json;
`pack_results` reads it) and each network's two PNGs (figures/<index>/, drawn here on the worker so
that the driver, which logs every network, does not draw 46,000 of them; `pack_outputs` reads both).
The results travel in the checkpoint, not in the reported metrics, so that Tune's experiment state
(every trial's last result, rewritten as trials finish) stays small at 23,000 networks. A retried trial (its node lost, `--max-failures`) or a resumed sweep starts from the
checkpoint and trains only what was not finished.

Device and stack size are resolved here, on the worker, from the resources Ray gave the trial
(`worker_setup`): a sweep driven from a GPU-less head stacks networks on its GPU workers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import statistics
import tempfile
from pathlib import Path

import ray
from ray import tune

from imbalance_core.result import ACCURACY, ACCURACY_THRESHOLDED, AUC, HEADLINE
from imbalance_core.trial import TrialConfig

from .figures import NETWORK_FIGURES, network_figures
from .tracking import dumps

CHECKPOINT_RESULTS = "networks.json"   # a pack's checkpoint: {index: result} of its finished networks
CHECKPOINT_PHASE1 = "phase1.pt"         # and the phase-1 states its unfinished two-phase networks need
CHECKPOINT_FIGURES = "figures"          # a final checkpoint: each network's PNGs, figures/<index>/<name>


def is_final(result: dict) -> bool:
    """A pack's last report: its checkpoint holds every network's result (or, in sweeps started before
    results travelled in the checkpoint, the report itself holds them as a JSON string under "networks")."""
    return bool(result.get("final")) or "networks" in result


def _results_in(folder) -> list[dict]:
    saved = json.loads((Path(folder) / CHECKPOINT_RESULTS).read_text())
    return [saved["done"][str(i)] for i in range(len(saved["pack"]))]


def pack_results(result: dict, checkpoint) -> list[dict]:
    """Every network's result, in pack order, from a pack's final report and its checkpoint."""
    if "networks" in result:                       # a sweep started before (its Tune state still holds them)
        n = result["networks"]
        return json.loads(n) if isinstance(n, str) else n
    with checkpoint.as_directory() as d:
        return _results_in(d)


@contextlib.contextmanager
def pack_outputs(result: dict, checkpoint):
    """[(result, {figure name: PNG file})] of every network, in pack order, from a pack's final report and
    its checkpoint; the files exist inside the with block (the trial drew them: `_run_pack`). A sweep
    started before results and figures travelled in the checkpoint gives no figures (None)."""
    if "networks" in result:
        yield [(r, None) for r in pack_results(result, checkpoint)]
        return
    with checkpoint.as_directory() as d:
        yield [(r, {n: Path(d) / CHECKPOINT_FIGURES / str(i) / n for n in NETWORK_FIGURES})
               for i, r in enumerate(_results_in(d))]


def trial_gpu_fraction() -> float:
    """The share of one GPU Ray gave this trial (`--gpus-per-trial`, e.g. 0.5; at most 1: a pack stacks on one
    GPU), 1.0 outside a Tune trial."""
    try:
        gpus = float(tune.get_context().get_trial_resources().required_resources.get("GPU", 0) or 0)
    except Exception:                               # not in a Tune trial (a direct call, a test)
        return 1.0
    return min(gpus, 1.0) if gpus > 0 else 1.0


def worker_setup(configs: list[TrialConfig]) -> dict:
    """What this worker will do with the pack: the device (from the trial's config and the GPUs Ray gave
    this worker: Ray hides the others), the share of the GPU it was given and how many networks it trains at
    once on it (from that share of the memory, PyTorch's own cache counted as free: packing.usable_memory)."""
    from imbalance_core import packing
    from imbalance_core.trial import resolve_device
    device = resolve_device(configs[0].device)
    fraction = trial_gpu_fraction()
    stack = min(len(configs), packing.auto_pack_size(configs[0].model, configs[0].schedule.batch_size, device,
                                                     fraction)) if device.type == "cuda" else 1
    return {"device": str(device), "stack": stack, "gpu_fraction": fraction,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}


def load_pack_checkpoint(checkpoint, configs: list[TrialConfig]) -> tuple[dict[int, dict], dict[str, dict]]:
    """({index: result}, {phase1_key: state}) from a pack's Tune checkpoint (empty without one)."""
    if checkpoint is None:
        return {}, {}
    import torch
    with checkpoint.as_directory() as d:
        saved = json.loads((Path(d) / CHECKPOINT_RESULTS).read_text())
        if saved.get("pack") != [dataclasses.asdict(c) for c in configs]:
            return {}, {}                          # not this pack's checkpoint: start over
        done = {int(i): r for i, r in saved["done"].items()}
        p1 = Path(d) / CHECKPOINT_PHASE1
        phase1 = torch.load(p1, weights_only=True) if p1.is_file() else {}
    return done, phase1


def _save_pack_checkpoint(folder: str, configs, done: dict, phase1: dict) -> None:
    import torch
    (Path(folder) / CHECKPOINT_RESULTS).write_text(dumps({"pack": [dataclasses.asdict(c) for c in configs],
                                                          "done": {str(i): r for i, r in done.items()}}))
    if phase1:
        torch.save(phase1, Path(folder) / CHECKPOINT_PHASE1)


def _run_pack(config: dict, runner) -> None:
    """One trial: `runner(configs, done=, phase1=, on_progress=, stack=)` (run_trials or rehearse_trials)
    with checkpointed progress and one final report of every network's result."""
    import torch

    from imbalance_core.methods import get as method_spec
    from imbalance_core.trial import phase1_key
    # Ray Train logs "Checkpoint successfully created at: <path>" at INFO for every report, and Ray streams each
    # such line from the worker to the driver's terminal (two or more per pack: over 9,000 lines at the mnist
    # preset, costing the worker, Ray's log monitor and the driver); the progress line already says it
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    configs = [TrialConfig.from_dict(d) for d in config["pack"]]
    setup = worker_setup(configs)
    node = ray.get_runtime_context().get_node_id()
    done, phase1 = load_pack_checkpoint(tune.get_checkpoint(), configs)
    resumed_from = len(done)
    last_step: list[int] = []

    def report(metrics: dict, trained: list[int], final: bool = False) -> None:
        with tempfile.TemporaryDirectory(prefix="pack-ckpt-") as d:
            _save_pack_checkpoint(d, configs, done, phase1)
            if final:                              # the networks' PNGs, drawn here, where the work is parallel
                for i, r in done.items():
                    network_figures(Path(d) / CHECKPOINT_FIGURES / str(i), r)
            tune.report({**metrics, "networks_done": len(done), "n_networks": len(configs), "node_id": node,
                         "resumed_from": resumed_from, "trained_now": trained,
                         "worker_device": setup["device"], "worker_stack": setup["stack"]},
                        checkpoint=tune.Checkpoint.from_directory(d))

    def on_progress(finished: dict, states: dict[str, dict]) -> None:
        for i, r in finished.items():
            done[i] = {**r.to_dict(), "node_id": node}   # which cluster node trained it (an MLflow tag)
        phase1.update(states)
        needed = {phase1_key(c) for i, c in enumerate(configs) if i not in done and method_spec(c.method).two_phase}
        for k in [k for k in phase1 if k not in needed]:
            del phase1[k]
        last_step[:] = sorted(finished)
        if len(done) < len(configs):               # the last step is reported with the results, below
            report({}, sorted(finished))

    results = runner(configs, done=done, phase1=phase1, on_progress=on_progress,
                     stack=setup["device"].startswith("cuda"), max_stack=setup["stack"],
                     gpu_fraction=setup["gpu_fraction"], allow_tf32=bool(config.get("allow_tf32", False)))
    report({"final": True, **{f"{k}_mean": statistics.fmean(r[k] for r in results) for k in HEADLINE}}, last_step,
           final=True)


def train_pack(config: dict) -> None:
    """One Tune trial: train a pack of networks (run_trials) and report all their results."""
    from imbalance_core.trial import run_trials
    _run_pack(config, run_trials)


def rehearse_pack(config: dict) -> None:
    """One Tune trial of a rehearsal: the pack's networks get synthetic results (rehearse_trials)."""
    _run_pack(config, rehearse_trials)


# --------------------------------------------------------------------------- rehearsal results

_TEMPLATES: dict[str, tuple] = {}     # dataset -> (train labels, test labels, metrics of synthetic scores)


def _template(c: TrialConfig) -> tuple:
    """Per dataset and worker process, once: its real labels and the real metric functions (evaluate,
    posthoc) run on synthetic test scores, so that every matrix and list has the real shape."""
    key = f"{c.dataset}:{c.data_dir}"
    if key not in _TEMPLATES:
        import numpy as np

        from imbalance_core import datasets as D
        from imbalance_core.metrics import evaluate, posthoc
        ds = D.load_dataset(c.dataset, c.data_dir)
        y_train, y_test = np.asarray(ds.train_y), np.asarray(ds.test_y)
        C = ds.num_classes
        rng = np.random.default_rng(0)
        z = rng.normal(size=(len(y_test), C))
        z[np.arange(len(y_test)), y_test] += 2.5
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        priors = np.full(C, 1.0 / C)
        m = evaluate(y_test, p, priors)
        plain = posthoc(y_test, p, priors)
        with_features = posthoc(y_test, p, priors, rng.normal(size=(len(y_test), 8)), rng.normal(size=(C, 8)))
        _TEMPLATES[key] = (y_train, y_test, m, plain, with_features)
    return _TEMPLATES[key]


@functools.lru_cache(maxsize=8)
def _data_digest(dataset: str, data_dir: str | None) -> str:
    from imbalance_core import datasets as D
    return D.digest(D.load_dataset(dataset, data_dir))


@functools.lru_cache(maxsize=64)
def _subset_facts(dataset: str, data_dir: str | None, imbalance: str, n: int, rho: float, mu: float, seed: int,
                  sampler: str, level: float | None) -> tuple:
    """(size, sha256 of the indices, class counts, sampled counts) of a training subset: the same for every
    method of a cell and seed (a pack holds several), so drawn once per worker."""
    from imbalance_core.imbalance import make_subset
    from imbalance_core.sampling import SamplingPlan
    y_train = _template(TrialConfig(dataset=dataset, data_dir=data_dir))[0]
    sub = make_subset(y_train, dataset, imbalance, n, rho, mu, seed)
    return (int(len(sub.indices)), sub.digest, list(sub.counts),
            SamplingPlan(sub, y_train, sampler=sampler, level=level).counts)


def synthetic_result(c: TrialConfig, node_time: float) -> dict:
    """A result of exactly the shape run_trials gives for `c` (every key, list and matrix), with synthetic
    values: AUC and accuracies fall with log rho and vary by method and seed (deterministic)."""
    import math
    import zlib

    import numpy as np

    from imbalance_core import methods as M
    from imbalance_core import specs as S
    from imbalance_core.models import MODELS
    y_train, y_test, m, plain, with_features = _template(c)
    spec = M.get(c.method)
    size, digest, counts, sampled = _subset_facts(c.dataset, c.data_dir, c.imbalance, c.n, c.rho, c.mu, c.seed,
                                                  spec.phases[0].sampler, c.level)
    rng = np.random.default_rng([zlib.crc32(f"{c.method}/{c.imbalance}/{c.level}".encode()), c.seed, int(c.rho),
                                 int(100 * c.mu)])
    drop = math.log10(max(c.rho, 1.0)) * (1.0 + (zlib.crc32(c.method.encode()) % 7) / 7)
    r = {k: (list(map(list, v)) if k.startswith("confusion") else list(v)) if isinstance(v, list) else v
         for k, v in m.items()}
    r[AUC] = float(min(100.0, 99.5 - drop + rng.normal(0, 0.3)))
    r[ACCURACY] = float(max(0.0, 98.0 - 8 * drop + rng.normal(0, 1.0)))
    r[ACCURACY_THRESHOLDED] = float(max(0.0, 98.0 - 4 * drop + rng.normal(0, 1.0)))
    # tau-norm needs the network's test features at hand: a linear head and the test set in memory (trial.py)
    linear_tau = spec.head == "linear" and hasattr(MODELS[c.model], "features") and S.get(c.dataset).in_memory
    for k, v in (with_features if linear_tau else plain).items():
        r[k] = list(v) if isinstance(v, list) else float(max(0.0, r[ACCURACY] + rng.normal(0, 1.0)))
    two = spec.two_phase
    iterations = c.schedule.iterations
    r.update({
        "train_examples": size,
        "subset_digest": digest,
        "data_digest": _data_digest(c.dataset, c.data_dir),
        "class_counts": list(counts),
        "sampled_counts": list(sampled),
        "epoch_examples": int(sum(sampled)),
        "iterations": iterations,
        "finetune_iterations": iterations if two else 0,
        "finetune_on": "cached features" if two and spec.phases[-1].only_last else ("whole network" if two else ""),
        "batch_size": c.schedule.batch_size,
        "base_lr": c.schedule.base_lr,
        "train_seconds": 0.0,
        "started_at": node_time,
        "ended_at": node_time,
        "images_per_second": 0.0,
        "final_loss": float(abs(rng.normal(0.05, 0.02))),
        "device": "rehearsal",
        "loader": "rehearsal",
        "model": c.model,
        "test_examples": int(len(y_test)),
        "stack_size": 1,
        "oom_splits": 0,
        "tf32": "off",
        "device_name": "rehearsal",
        "torch_version": "rehearsal",
        "cuda_version": "",
    })
    return r


def rehearse_trials(configs: list[TrialConfig], *, done: dict | None = None,
                    phase1: dict[str, dict] | None = None, on_progress=None, stack: bool = False,
                    max_stack: int | None = None, gpu_fraction: float = 1.0, allow_tf32: bool = False) -> list:
    """run_trials' contract without training: one synthetic NetworkResult per network, reported in the steps
    a stacked pack reports (one-phase networks after phase 1, two-phase networks after phase 2)."""
    import time

    from imbalance_core import methods as M
    from imbalance_core.result import NetworkResult
    done = {int(i): NetworkResult.from_dict(r) for i, r in (done or {}).items()}
    t0 = time.perf_counter()
    todo = [i for i in range(len(configs)) if i not in done]
    for two in (False, True):
        step = {}
        for i in todo:
            if M.get(configs[i].method).two_phase == two:
                r = synthetic_result(configs[i], time.time())
                r.update(pack_size=len(configs), pack_seconds=time.perf_counter() - t0)
                step[i] = NetworkResult.from_dict(r)
        done.update(step)
        if step and on_progress is not None:
            on_progress(step, {})
    return [done[i] for i in range(len(configs))]
