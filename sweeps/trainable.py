"""The Tune trainables: one trial = one pack of networks, run on a Ray worker.

    train_pack(config)       trains the pack (imbalance_core.trial.run_trials) and reports its results
    rehearse_pack(config)    the same path without training: a synthetic result of the real shape per
                             network (`--rehearse`, `sweeps.rehearsal`: sizes the driver, Tune and MLflow for a
                             cluster)

A trial's config is {"pack": [asdict(TrialConfig), ...]}. Both trainables report progress with a Tune
checkpoint after every step of the pack (CPU: each network; stacked GPU: each phase) and end with one
report `{"final": True, ...}` whose checkpoint holds every network's result and each network's two PNGs
(drawn here on the worker so that the driver, which logs every network, does not draw 46,000 of them); the
checkpoint's format is `sweeps.checkpoint`. A retried trial (its node lost, `--max-failures`) or a resumed
sweep starts from the checkpoint and trains only what was not finished.

Device and stack size are resolved here, on the worker, from the resources Ray gave the trial
(`worker_setup`): a sweep driven from a GPU-less head stacks networks on its GPU workers.
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import ray
from ray import tune

from imbalance_core.result import HEADLINE
from imbalance_core.trial import TrialConfig

from . import compat
from .checkpoint import CHECKPOINT_FIGURES, PackProgress
from .rehearsal import rehearse_trials
from .run_figures import network_figures

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


DEFAULT_CHECKPOINT_EVERY_S = 600.0   # inside a phase: a reclaimed spot node loses at most ~10 minutes of it


def _run_pack(config: dict, runner) -> None:
    """One trial: `runner(configs, done=, phase1=, in_phase=, on_progress=, on_phase=, stack=, ...)` (run_trials
    or rehearse_trials) with checkpointed progress (after each step, and every config["checkpoint_every_s"]
    inside a phase) and one final report of every network's result."""
    import torch
    # Ray Train logs "Checkpoint successfully created at: <path>" at INFO for every report, and Ray streams each
    # such line from the worker to the driver's terminal (two or more per pack: over 9,000 lines at the mnist
    # preset, costing the worker, Ray's log monitor and the driver); the progress line already says it
    compat.quiet_checkpoint_log()
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    configs = [TrialConfig.from_dict(d) for d in config["pack"]]
    setup = worker_setup(configs)
    node = ray.get_runtime_context().get_node_id()
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        progress = PackProgress(configs)
    else:
        with checkpoint.as_directory() as d:
            progress = PackProgress.load(d, configs)
    resumed_from = len(progress.done)
    last_step: list[int] = []

    def report(metrics: dict, trained: list[int], final: bool = False) -> None:
        with tempfile.TemporaryDirectory(prefix="pack-ckpt-") as d:
            progress.save(d)
            if final:                              # the networks' PNGs, drawn here, where the work is parallel
                for i, r in progress.done.items():
                    network_figures(Path(d) / CHECKPOINT_FIGURES / str(i), r)
            tune.report({**metrics, "networks_done": len(progress.done), "n_networks": len(configs),
                         "node_id": node,
                         "resumed_from": resumed_from, "trained_now": trained,
                         "worker_device": setup["device"], "worker_stack": setup["stack"]},
                        checkpoint=tune.Checkpoint.from_directory(d))

    def on_progress(finished: dict, states: dict[str, dict]) -> None:
        progress.finished(finished, states, node_id=node)   # which cluster node trained it (an MLflow tag)
        last_step[:] = sorted(finished)
        if len(progress.done) < len(configs):      # the last step is reported with the results, below
            report({}, sorted(finished))

    def on_phase(group: str, state) -> None:
        progress.phase(group, state)
        report({}, [])

    results = runner(configs, **progress.resume_args(), on_progress=on_progress, on_phase=on_phase,
                     checkpoint_every_s=float(config.get("checkpoint_every_s", DEFAULT_CHECKPOINT_EVERY_S)),
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
