#!/usr/bin/env python
"""Run a grid of the study as a Ray Tune sweep; every trained network becomes one MLflow run.

    python sweeps/full_grid.py [--preset quick] [--datasets ..] [--methods ..] [--rho ..] [--mu ..]
        [--imbalance ..] [--repetitions N] [--iterations N] [--data-dir DIR] [--name NAME]
        [--tracking-uri URI] [--storage-path DIR] [--address ADDR] [--cpus-per-trial 1]
        [--gpus-per-trial 0] [--pack-size N] [--gpu-memory-gb G] [--max-failures 2] [--max-concurrent N]
        [--tracking-retry-s 600] [--resume] [--dry-run [--gpus N] [--price-per-gpu-hour P]]

One Tune trial trains a pack of networks (`--pack-size`, default the preset's) with
`imbalance_core.trial.run_trials` and reports their results once; the driver logs them to MLflow
(`sweeps.tracking`, layout in docs/SWEEP_CONTRACT.md), exactly once per network. Tune keeps the
sweep in `<storage-path>/<name>` (default `./runs/ray/<preset>`); `--resume` continues it, re-running
only trials that did not finish, and then makes sure every finished network is in MLflow. A pack
checkpoints after each finished network, so a retried or resumed trial trains only what it had not
finished. `--resume --tracking-uri NEW` moves a sweep to a new tracking server (a replaced head).

A tracking server that goes away (restart, outage) loses nothing: logging retries with a backoff of
1, 2, 4 .. 15 s, says so on the progress lines, and gives up after `--tracking-retry-s` (default 600 s)
of outage; training goes on meanwhile. The networks it could not log are named at the end (exit 1);
`--resume` logs them without training them again.

Ray: local by default (`ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=<CUDA devices>)`);
`--address auto` (or $RAY_ADDRESS) joins a running cluster, e.g. one started by `ray up cluster.yaml`.
A cluster started with `ray start` on a machine that has ~/.ray/auth_token turns token auth on: set
RAY_AUTH_MODE=disabled (or token) the same way for `ray start` and for this script. If Ray is already
initialised in this process (tests), that instance is used and left running.

Exit status: 0 all trials finished and logged; 1 some trial failed for good (or some network could not be logged);
2 bad input (nothing started); 130 interrupted (resume with --resume).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script: import this file as `sweeps.full_grid`, so that the callbacks Tune pickles
    # (and restores on --resume) always live in the same importable module.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sweeps.full_grid import main as _main
    sys.exit(_main())

import argparse
import dataclasses
import http.client
import json
import math
import os
import queue
import re
import statistics
import threading
import time
import urllib.parse
from dataclasses import dataclass

import ray
from ray import tune

from imbalance_core.datasets import DatasetError, load_dataset
from imbalance_core.trial import TrialConfig

from . import grids
from .grids import Overrides, cell_of, describe, pack, training_images
from .tracking import REPO_ROOT, Patience, TrackingError, check_tracking_uri, default_tracking_uri, dumps, redact

META_FILE = "sweep.json"          # our own record next to Tune's state: tracking URI, totals, data
# Assumed training throughput (images/s) for the dry-run estimate: LeNet-5 measured on one CPU core
# here (~3,000 img/s); the rest are rough figures for one CPU core / one GPU, not measurements.
ASSUMED_IMAGES_PER_SECOND = {
    "lenet5": {"cpu": 3_000, "gpu": 60_000},
    "allcnnc": {"cpu": 60, "gpu": 3_000},
    "resnet10": {"cpu": 15, "gpu": 1_500},
}


# --dry-run cost: the default price of one GPU-hour, US$: an AWS g5.2xlarge (1 A10G, 8 vCPU, 32 GiB; the
# gpu_1x node of cluster.yaml) on demand in us-west-2, Linux (spot is usually well below). Override with
# --price-per-gpu-hour for your region, market and instance type.
DEFAULT_PRICE_PER_GPU_HOUR = 1.212

DEFAULT_TRACKING_RETRY_S = 600.0
# MLflow's HTTP client would otherwise retry an absent server silently for minutes per request
# (7 retries, backoff factor 2): the sweep retries itself (Patience) and says so.
MLFLOW_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
_LOGGERS: dict[str, "MlflowLogger"] = {}   # sweep name -> the MlflowLogger Tune set up in this process
_TRACKING_URIS: dict[str, str] = {}        # sweep name -> its tracking URI, password included (not pickled)


class UsageError(ValueError):
    """Bad input: reported as one line, exit status 2, before Ray starts."""


# --------------------------------------------------------------------------- the trainable (runs on workers)

CHECKPOINT_RESULTS = "networks.json"   # a pack's checkpoint: {index: result} of its finished networks
CHECKPOINT_PHASE1 = "phase1.pt"         # and the phase-1 states its unfinished two-phase networks need


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


def train_pack(config: dict) -> None:
    """One Tune trial: train a pack of networks, report all their results in one final `tune.report`.

    After every training step (on CPU each network; stacked, each phase) it reports progress with a
    checkpoint: the finished networks' results and the phase-1 states that its unfinished two-phase
    networks still need. A retried trial (its node lost, `--max-failures`) or a resumed sweep starts from
    that checkpoint and trains only what was not finished. Each report says which networks it trained
    (`trained_now`) and how many the attempt started with (`resumed_from`).
    """
    import tempfile

    import torch

    from imbalance_core.methods import get as method_spec
    from imbalance_core.trial import phase1_key, run_trials
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    configs = [TrialConfig.from_dict(d) for d in config["pack"]]
    node = ray.get_runtime_context().get_node_id()
    done, phase1 = load_pack_checkpoint(tune.get_checkpoint(), configs)
    resumed_from = len(done)
    last_step: list[int] = []

    def report(metrics: dict, trained: list[int]) -> None:
        with tempfile.TemporaryDirectory(prefix="pack-ckpt-") as d:
            _save_pack_checkpoint(d, configs, done, phase1)
            tune.report({**metrics, "networks_done": len(done), "n_networks": len(configs), "node_id": node,
                         "resumed_from": resumed_from, "trained_now": json.dumps(trained)},
                        checkpoint=tune.Checkpoint.from_directory(d))

    def on_progress(finished: dict[int, dict], states: dict[str, dict]) -> None:
        for i, r in finished.items():
            r.node_id = node                         # which cluster node trained it (an MLflow tag)
            done[i] = r
        phase1.update(states)
        needed = {phase1_key(c) for i, c in enumerate(configs) if i not in done and method_spec(c.method).two_phase}
        for k in [k for k in phase1 if k not in needed]:
            del phase1[k]
        last_step[:] = sorted(finished)
        if len(done) < len(configs):               # the last step is reported with the results, below
            report({}, sorted(finished))

    results = run_trials(configs, done=done, phase1=phase1, on_progress=on_progress)
    report({
        "networks": dumps([r.to_dict() for r in results]),
        **{f"{k}_mean": statistics.fmean(r[k] for r in results) for k in ("auc", "accuracy", "accuracy_thresholded")},
    }, last_step)


# --------------------------------------------------------------------------- driver callbacks

TRACKING_REDIRECT: dict[str, str] = {}   # sweep -> tracking URI that replaces the one pinned in its state


class MlflowLogger(tune.Callback):
    """Logs each network of a reported trial result to MLflow from the driver, exactly once.

    Logging (a few SQL writes and two PNGs per network) runs on one background thread, so that it
    never holds up Tune's event loop; `on_experiment_end` waits for it to drain. While the tracking
    server is away the thread retries (`tracking.Patience`, bounded by `retry_s`) and says so; what
    it could not log, or a killed driver did not log, is logged by the reconciliation at the end of
    this run or the next (`--resume`).
    """

    def __init__(self, tracking_uri: str, sweep: str, retry_s: float = DEFAULT_TRACKING_RETRY_S):
        self.tracking_uri, self.sweep, self.retry_s = tracking_uri, sweep, retry_s
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.waiting = 0                          # networks reported but not yet through logging
        self.logged: set[str] = set()             # trial_keys logged (or found logged) by this session
        self.patience = Patience(retry_s, self._say)

    def __getstate__(self):                       # Tune pickles callbacks with the sweep (tuner.pkl)
        return {"tracking_uri": redact(self.tracking_uri), "sweep": self.sweep, "retry_s": self.retry_s}

    def __setstate__(self, state):
        # `--resume --tracking-uri NEW`: the callback Tune restores from the sweep's state logs to NEW
        self.__init__(TRACKING_REDIRECT.get(state["sweep"], state["tracking_uri"]), state["sweep"],
                      state.get("retry_s", DEFAULT_TRACKING_RETRY_S))

    def _say(self, msg: str) -> None:
        print(f"[sweep {self.sweep}] {msg}; {self.waiting} networks waiting to be logged", flush=True)

    def status(self) -> str:
        """For the progress line: the logging backlog and an ongoing outage."""
        out = ""
        if self.patience.away_since is not None:
            state = "not retrying" if self.patience.exhausted else f"retry {self.patience.retries}"
            out += f", MLflow unreachable for {_duration(self.patience.away_for())} ({state})"
        if self.waiting:
            out += f", {self.waiting} networks waiting to be logged"
        return out

    def setup(self, **info):
        from .tracking import Tracker
        tracker = Tracker(_TRACKING_URIS.get(self.sweep, self.tracking_uri), self.sweep)
        _LOGGERS[self.sweep] = self
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, args=(tracker,), name="mlflow-logger", daemon=True)
        self._thread.start()

    def _work(self, tracker) -> None:
        from .tracking import TrackingUnavailable, trial_key
        while (item := self._queue.get()) is not None:
            trial_id, packed, networks = item
            for d, r in zip(packed, json.loads(networks)):
                c = TrialConfig.from_dict(d)
                try:
                    self.patience.call(lambda: tracker.log_network(c, r, trial_id), describe(c))
                    self.logged.add(trial_key(c, self.sweep))
                except TrackingUnavailable:
                    pass                          # said once by Patience; named at the end
                except Exception as e:  # noqa: BLE001 - never stop the sweep for a logging failure
                    print(f"[sweep {self.sweep}] warning: could not log {describe(c)} to MLflow "
                          f"({type(e).__name__}: {e}); retried at the end", flush=True)
                finally:
                    with self._lock:
                        self.waiting -= 1

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "networks" in result:
            with self._lock:
                self.waiting += len(trial.config["pack"])
            self._queue.put((trial.trial_id, trial.config["pack"], result["networks"]))

    def on_experiment_end(self, trials, **info):
        if self._thread is not None:
            if self.waiting:
                print(f"[sweep {self.sweep}] training done; {self.waiting} networks still to log to MLflow"
                      + (f" (retrying while it is away, at most {self.retry_s:g} s)"
                         if self.patience.away_since is not None and not self.patience.exhausted else ""),
                      flush=True)
            self._queue.put(None)
            self._thread.join()


def _duration(s: float) -> str:
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress(tune.Callback):
    """Prints `[sweep NAME] 12/30 networks done (4/15 trials), 2 running, 0 failed, elapsed 1m20s, ~2m10s left`
    whenever a trial ends, and every `every_s` seconds otherwise."""

    def __init__(self, sweep: str, n_trials: int, n_networks: int, every_s: float = 30.0):
        self.sweep, self.n_trials, self.n_networks, self.every_s = sweep, n_trials, n_networks, every_s
        self.setup()

    def setup(self, **info):
        self.t0 = self.last = time.monotonic()
        self.ended: dict[str, str] = {}           # trial_id -> "done" | "failed", this session
        self.base_networks: int | None = None     # networks already done when this session started

    def _line(self, trials) -> str:
        status = {t.trial_id: self.ended.get(t.trial_id) or
                  {"TERMINATED": "done", "ERROR": "failed", "RUNNING": "running"}.get(t.status) for t in trials}
        size = {t.trial_id: len(t.config["pack"]) for t in trials}
        done = [i for i, s in status.items() if s == "done"]
        nets = sum(size[i] for i in done)
        if self.base_networks is None:
            self.base_networks = nets
        elapsed = time.monotonic() - self.t0
        rate = (nets - self.base_networks) / elapsed if elapsed > 0 else 0.0
        left = f"~{_duration((self.n_networks - nets) / rate)} left" if rate > 0 else "time left unknown yet"
        running = sum(s == "running" for s in status.values())
        failed = sum(s == "failed" for s in status.values())
        logger = _LOGGERS.get(self.sweep)
        return (f"[sweep {self.sweep}] {nets}/{self.n_networks} networks done ({len(done)}/{self.n_trials} trials), "
                f"{running} running, {failed} failed, elapsed {_duration(elapsed)}, {left}"
                + (logger.status() if logger else ""))

    def _print(self, trials):
        self.last = time.monotonic()
        print(self._line(trials), flush=True)

    def on_step_begin(self, iteration, trials, **info):
        if self.base_networks is None:
            self._line(trials)                    # fixes the networks already done (a resumed sweep)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = "done"
        self._print(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = "failed"
        self._print(trials)

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self.last >= self.every_s:
            self._print(trials)


# --------------------------------------------------------------------------- arguments and plan

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python sweeps/full_grid.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="presets:\n" + "\n".join(f"  {g.name:9s} {g.description}"
                                                                for g in grids.PRESETS.values()))
    g = p.add_argument_group("grid (overrides of the preset)")
    g.add_argument("--preset", default="quick", help=f"one of {', '.join(grids.PRESETS)} (default quick)")
    g.add_argument("--datasets", nargs="+", help="run the preset's cells on these datasets instead")
    g.add_argument("--methods", nargs="+", help="keep only these of the preset's methods")
    g.add_argument("--imbalance", nargs="+", help="keep only these of the preset's imbalance types")
    g.add_argument("--rho", nargs="+", type=float, help="replace the rho values of every block")
    g.add_argument("--mu", nargs="+", type=float, help="replace the mu values of every step block")
    g.add_argument("--levels", nargs="+", type=float, help="replace the partial-sampling levels")
    g.add_argument("--lr", nargs="+", type=float, help="base learning rates (default: the paper's)")
    g.add_argument("--repetitions", type=int, help="runs per cell and method (seeds 0..N-1)")
    g.add_argument("--iterations", type=int, help="training iterations per phase (default: the preset's)")
    g.add_argument("--data-dir", help="folder holding the dataset (mnist, cifar10, imagenet)")
    g.add_argument("--device", help="auto | cpu | cuda (default auto)")
    g.add_argument("--loader", help="auto | tensor | torch | ffcv (default auto)")
    s = p.add_argument_group("sweep")
    s.add_argument("--name", help="sweep name = MLflow experiment = Tune experiment folder (default: the preset)")
    s.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///<cwd>/mlflow.db with artifacts in <cwd>/mlartifacts); "
                                          "with --resume: the sweep's new tracking server (e.g. after the "
                                          "head node was replaced), instead of the one pinned at its start")
    s.add_argument("--storage-path", help="Tune storage folder (default <cwd>/runs/ray)")
    s.add_argument("--address", help="Ray cluster to join ('auto': the running one); default: a local Ray")
    s.add_argument("--cpus-per-trial", type=float, default=1.0)
    s.add_argument("--gpus-per-trial", type=float, default=0.0)
    s.add_argument("--pack-size", type=_pack_size_arg, default="auto",
                   help="networks trained together per trial, or 'auto' (default): imbalance_core.packing's "
                        "choice for the device (CPU: 5, the methods of one cell and seed; GPU: memory-bound)")
    s.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial (default 2)")
    s.add_argument("--max-concurrent", type=int, help="at most this many trials at once (default: as resources allow)")
    s.add_argument("--tracking-retry-s", type=float, default=DEFAULT_TRACKING_RETRY_S,
                   help="while the MLflow server is away, retry logging (backoff 1..15 s) for at most this "
                        "many seconds of outage (default 600); networks still unlogged are named at the end "
                        "and --resume logs them")
    s.add_argument("--resume", action="store_true",
                   help="continue the sweep <storage-path>/<name> as it was started (grid and resource options "
                        "are ignored): re-run unfinished and failed trials, then log what MLflow lacks")
    s.add_argument("--gpu-memory-gb", type=float,
                   help="size GPU packs (--pack-size auto) for a GPU of this much memory, e.g. 24 for an A10G, "
                        "when the driver has no GPU itself (a cluster's CPU head)")
    s.add_argument("--dry-run", action="store_true", help="print the sweep's size and estimated compute, then exit")
    c = p.add_argument_group("--dry-run cost estimate (GPU sweeps)")
    c.add_argument("--gpus", type=int, help="GPUs of the cluster, for the wall time and cost (e.g. 8 for 8 "
                                            "gpu_1x nodes); implies --gpus-per-trial 1 if that is not set")
    c.add_argument("--price-per-gpu-hour", type=float, default=DEFAULT_PRICE_PER_GPU_HOUR,
                   help=f"US$ per GPU-hour (default {DEFAULT_PRICE_PER_GPU_HOUR}: AWS g5.2xlarge on demand, "
                        f"us-west-2)")
    return p


def _pack_size_arg(v: str) -> int | str:
    if v == "auto":
        return v
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not an integer or 'auto'") from None


def auto_pack_size(configs: list[TrialConfig], gpus_per_trial: float,
                   gpu_memory_gb: float | None = None) -> tuple[int, str]:
    """`--pack-size auto`: imbalance_core.packing's size for the sweep's models on the trials' device
    (`gpu_memory_gb`: a GPU of that much memory instead of the driver's own)."""
    import torch

    from imbalance_core import packing
    if gpus_per_trial <= 0:               # the networks of one (cell, seed): every shared first phase is shared
        return grids.largest_group(configs), "auto: CPU pack"
    if gpu_memory_gb is not None:
        size = min(packing.stack_size(c.model, c.schedule.batch_size, gpu_memory_gb * 2 ** 30)
                   for c in {(c.model, c.schedule.batch_size): c for c in configs}.values())
        return size, f"auto: a {gpu_memory_gb:g} GB GPU (--gpu-memory-gb)"
    if not torch.cuda.is_available():
        return packing.CPU_PACK, "auto: no GPU on the driver to size GPU packs; pass --pack-size to stack more"
    size = min(packing.auto_pack_size(c.model, c.schedule.batch_size, "cuda")
               for c in {(c.model, c.schedule.batch_size): c for c in configs}.values())
    return size, "auto: GPU memory of the driver's device"


@dataclass
class Plan:
    sweep: str
    sweep_dir: Path
    tracking_uri: str
    packs: list[list[TrialConfig]]   # empty on --resume (Tune holds them)
    pack_size: str                   # how packs were sized, for the output
    n_trials: int
    n_networks: int
    data: list[tuple[str, str | None]]
    moved_from: str | None = None    # --resume --tracking-uri NEW: the URI pinned at the sweep's start


def normalize_tracking_uri(uri: str, what: str = "--tracking-uri") -> str:
    """`uri` without surrounding whitespace (a head IP captured through `ray exec`, a tty, ends in '\r');
    UsageError naming it if it still holds a control character or space, or is a malformed http(s) URL."""
    cleaned = uri.strip()
    if cleaned != uri:
        print(f"note: {what} {redact(uri)!r}: surrounding whitespace removed -> {cleaned!r}", file=sys.stderr)
    bad = sorted({ch for ch in cleaned if ch.isspace() or ord(ch) < 32 or ord(ch) == 127})
    if not cleaned or bad:
        hint = " (a head IP captured through `ray exec`, a tty, ends in '\\r': pipe it through tr -d '\\r')" \
            if "\r" in bad else ""
        raise UsageError(f"{what} {redact(uri)!r} is not allowed: " + (f"it holds {bad} (control characters or spaces)"
                         if bad else "it is empty") + f"; expected http://HOST:PORT or sqlite:////abs/path/mlflow.db{hint}")
    if cleaned.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(cleaned)
        try:
            parts.port
        except ValueError as e:
            raise UsageError(f"{what} {redact(uri)!r} is not allowed: {e}; expected http://HOST:PORT") from None
        if not parts.hostname:
            raise UsageError(f"{what} {redact(uri)!r} is not allowed: no host; expected http://HOST:PORT")
    return cleaned


def _tuple(v):
    return None if v is None else tuple(v)


def _check_resources(a) -> None:
    for name in ("cpus_per_trial", "gpus_per_trial"):
        v = getattr(a, name)
        if not (math.isfinite(v) and v >= 0):
            raise UsageError(f"--{name.replace('_', '-')} {v:g} is not allowed: need a number >= 0")
    if a.cpus_per_trial == 0 and a.gpus_per_trial == 0:
        raise UsageError("--cpus-per-trial 0 with --gpus-per-trial 0: a trial needs some resource")
    if a.max_failures < 0:
        raise UsageError(f"--max-failures {a.max_failures} is not allowed: need an integer >= 0")
    if not (math.isfinite(a.tracking_retry_s) and a.tracking_retry_s >= 0):
        raise UsageError(f"--tracking-retry-s {a.tracking_retry_s:g} is not allowed: need a number of seconds >= 0")
    if a.max_concurrent is not None and a.max_concurrent < 1:
        raise UsageError(f"--max-concurrent {a.max_concurrent} is not allowed: need an integer >= 1")
    if a.pack_size != "auto" and a.pack_size < 1:
        raise UsageError(f"--pack-size {a.pack_size} is not allowed: need an integer >= 1")
    if a.gpu_memory_gb is not None and not (math.isfinite(a.gpu_memory_gb) and a.gpu_memory_gb > 0):
        raise UsageError(f"--gpu-memory-gb {a.gpu_memory_gb:g} is not allowed: need a number of GB > 0")
    if a.gpus is not None:
        if not a.dry_run:
            raise UsageError("--gpus sizes the --dry-run estimate only; add --dry-run (a sweep uses what the "
                             "cluster has)")
        if a.gpus < 1:
            raise UsageError(f"--gpus {a.gpus} is not allowed: need an integer >= 1")
        if a.gpus_per_trial > a.gpus:
            raise UsageError(f"--gpus-per-trial {a.gpus_per_trial:g} exceeds --gpus {a.gpus}")
    if not (math.isfinite(a.price_per_gpu_hour) and a.price_per_gpu_hour >= 0):
        raise UsageError(f"--price-per-gpu-hour {a.price_per_gpu_hour:g} is not allowed: need US$ >= 0")
    if a.dry_run and a.gpus is not None:
        return                                   # an estimate for a cluster, not for this machine's Ray
    if not (a.address or os.environ.get("RAY_ADDRESS")):     # local Ray: a bigger trial would wait forever
        if ray.is_initialized():
            have = ray.cluster_resources()
            cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
        else:
            import torch
            cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
        if a.cpus_per_trial > cpus:
            raise UsageError(f"--cpus-per-trial {a.cpus_per_trial:g} exceeds the {cpus:g} CPUs of the local Ray")
        if a.gpus_per_trial > gpus:
            raise UsageError(f"--gpus-per-trial {a.gpus_per_trial:g} exceeds the {gpus:g} GPUs of the local Ray")


def _check_data(data) -> None:
    for dataset, data_dir in data:
        try:
            load_dataset(dataset, data_dir)
        except DatasetError as e:
            raise UsageError(f"--data-dir {data_dir}: {e}") from None


def plan_sweep(a) -> Plan:
    """Every check that needs neither Ray nor a tracking server; raises UsageError naming the bad value."""
    _check_resources(a)
    if a.preset not in grids.PRESETS:
        raise UsageError(f"preset {a.preset!r} is unknown; choose one of {', '.join(grids.PRESETS)}")
    sweep = a.name or a.preset
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", sweep):
        raise UsageError(f"--name {sweep!r} is not allowed: use letters, digits, '.', '_' and '-'")
    storage = Path(a.storage_path or Path.cwd() / "runs" / "ray").resolve()
    sweep_dir = storage / sweep
    exists = tune.Tuner.can_restore(str(sweep_dir))
    if a.resume:
        if not exists:
            raise UsageError(f"--resume: no sweep to resume at {sweep_dir} (no Tune state there); "
                             f"check --name and --storage-path")
        meta = json.loads((sweep_dir / META_FILE).read_text()) if (sweep_dir / META_FILE).is_file() else {}
        pinned = meta.get("tracking_uri")           # without its password (redacted)
        env = os.environ.get("MLFLOW_TRACKING_URI")
        uri = a.tracking_uri or (env if env and pinned and redact(env) == redact(pinned) else None) \
            or pinned or default_tracking_uri()
        if "***" in uri:
            raise UsageError(f"--resume: sweep {sweep!r} logs to {pinned}: pass its --tracking-uri with the "
                             f"password (or set MLFLOW_TRACKING_URI, or put the password in ~/.pgpass)")
        # a different --tracking-uri moves the sweep to a new tracking server (a replaced head: _move_tracking)
        uri = normalize_tracking_uri(uri, "--tracking-uri" if a.tracking_uri else f"the tracking URI of sweep {sweep!r}")
        data = [tuple(d) for d in meta.get("data", [])]
        _check_data(data)
        return Plan(sweep, sweep_dir, uri, [], meta.get("pack_size", "?"), meta.get("n_trials", 0),
                    meta.get("n_networks", 0), data,
                    moved_from=pinned if pinned and redact(uri) != redact(pinned) else None)
    if exists:
        raise UsageError(f"sweep {sweep!r} already exists at {sweep_dir}: add --resume to continue it, "
                         f"or choose another --name")
    grid = grids.PRESETS[a.preset]
    o = Overrides(datasets=_tuple(a.datasets), methods=_tuple(a.methods), imbalance=_tuple(a.imbalance),
                  rho=_tuple(a.rho), mu=_tuple(a.mu), levels=_tuple(a.levels), lrs=_tuple(a.lr),
                  repetitions=a.repetitions, iterations=a.iterations, device=a.device, loader=a.loader,
                  data_dir=a.data_dir and os.path.abspath(a.data_dir))   # workers run in other folders
    try:
        configs = grids.expand(grid, o)
    except ValueError as e:
        raise UsageError(str(e)) from None
    data = list(dict.fromkeys((c.dataset, c.data_dir) for c in configs))
    _check_data(data)
    if a.pack_size == "auto":
        size, how = auto_pack_size(configs, a.gpus_per_trial, a.gpu_memory_gb)
    else:
        size, how = a.pack_size, "--pack-size"
    packs = pack(configs, size, whole_groups=a.pack_size == "auto" and a.gpus_per_trial <= 0)
    uri = normalize_tracking_uri(a.tracking_uri or default_tracking_uri(),
                                 "--tracking-uri" if a.tracking_uri else "$MLFLOW_TRACKING_URI")
    return Plan(sweep, sweep_dir, uri, packs, f"<= {size} ({how})",
                len(packs), len(configs), data)


def pack_seconds(pack_: list[TrialConfig], device: str, per_trial: float) -> float:
    """Assumed training time of one pack (ASSUMED_IMAGES_PER_SECOND) with `per_trial` CPUs or GPUs."""
    return training_images(pack_) / (ASSUMED_IMAGES_PER_SECOND[pack_[0].model][device] * max(per_trial, 1e-9))


def cluster_estimate(plan: Plan, a, seconds: float) -> dict:
    """Wall time and cost of a GPU sweep on `a.gpus` GPUs: trials run `gpus // gpus_per_trial` at once (at
    most --max-concurrent), each taking the next free slot (longest first, as a list schedule); every GPU
    is paid for the whole wall time."""
    import heapq
    slots = int(a.gpus // a.gpus_per_trial)
    slots = max(1, min(slots, plan.n_trials, a.max_concurrent or slots))
    ends = [0.0] * slots
    for t in sorted((pack_seconds(p, "gpu", a.gpus_per_trial) for p in plan.packs), reverse=True):
        heapq.heappush(ends, heapq.heappop(ends) + t)
    wall = max(ends, default=0.0)
    return {"slots": slots, "wall_s": wall, "cost": a.gpus * wall / 3600 * a.price_per_gpu_hour}


def dry_run_report(plan: Plan, a) -> str:
    device = "gpu" if a.gpus_per_trial > 0 else "cpu"
    per_trial = a.gpus_per_trial if device == "gpu" else a.cpus_per_trial
    images, seconds = 0, 0.0
    for p in plan.packs:
        images += training_images(p)
        seconds += pack_seconds(p, device, per_trial)
    models = sorted({p[0].model for p in plan.packs})
    assumed = ", ".join(f"{m} {ASSUMED_IMAGES_PER_SECOND[m][device]:,} img/s per {device.upper()}" for m in models)
    lines = [
        f"[dry-run] sweep {plan.sweep}: {plan.n_networks:,} networks in {plan.n_trials:,} trials (packs of "
        f"{plan.pack_size}), {len({cell_of(c) for p in plan.packs for c in p}):,} cells",
        f"  training images: {images:,} (iterations x batch per network and phase; a pack trains the shared "
        f"first phase of two-phase networks once)",
        f"  estimated compute: {_duration(seconds)} of trial time at {per_trial:g} {device.upper()}(s) per trial, "
        f"assuming {assumed} (start-up, evaluation and logging not included)",
    ]
    if device == "gpu":
        gpu_hours = seconds * per_trial / 3600
        lines.append(f"  GPU-hours: {gpu_hours:,.1f} (= {gpu_hours * a.price_per_gpu_hour:,.2f} US$ of GPU time at "
                     f"{a.price_per_gpu_hour:g} US$ per GPU-hour, --price-per-gpu-hour)")
        if a.gpus is not None:
            est = cluster_estimate(plan, a, seconds)
            lines.append(f"  on {a.gpus} GPU{'s' if a.gpus != 1 else ''}: {est['slots']} trials at once -> about {_duration(est['wall_s'])} "
                         f"wall time; cost about {est['cost']:,.2f} US$ ({a.gpus} GPUs x {est['wall_s'] / 3600:,.2f} h "
                         f"x {a.price_per_gpu_hour:g} US$; the CPU head, node start-up and storage not included)")
    if a.gpus is None and not (a.address or os.environ.get("RAY_ADDRESS")):
        import torch
        slots = int((torch.cuda.device_count() if device == "gpu" else os.cpu_count() or 1) // max(per_trial, 1e-9))
        slots = max(1, min(slots, plan.n_trials, a.max_concurrent or slots))
        lines.append(f"  on this machine: {slots} trials at once -> about {_duration(seconds / slots)} wall time")
    lines.append(f"  Tune state: {plan.sweep_dir}; MLflow: {redact(plan.tracking_uri)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the sweep

def _init_ray(a) -> bool:
    """Start or join Ray; True if this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    address = a.address or os.environ.get("RAY_ADDRESS")
    # Workers import `sweeps.full_grid.train_pack`: put the repository on their path (Ray itself adds
    # only the driver's script folder and working directory). On a cluster the repository must sit at
    # the same path on every node (or be installed there).
    job_config = ray.job_config.JobConfig(code_search_path=[str(REPO_ROOT)])
    if address:
        ray.init(address=address, job_config=job_config)
    else:
        import torch
        ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(),
                 include_dashboard=False, job_config=job_config)
    return True


def _results_table(rows: list[tuple[TrialConfig, dict]]) -> str:
    from imbalance_core.methods import ORDER, get
    rows = sorted(rows, key=lambda cr: (cr[0].dataset, cr[0].imbalance, cr[0].rho, cr[0].mu, cr[0].lr or 0,
                                        ORDER.index(get(cr[0].method).base), cr[0].method, cr[0].level or 0))
    groups: dict[tuple, list[dict]] = {}
    for c, r in rows:
        method = c.method + (f" L{c.level:g}" if c.level is not None else "")
        groups.setdefault((cell_of(c), method, "" if c.lr is None else f"{c.lr:g}"), []).append(r)
    with_lr = any(k[2] for k in groups)
    w = max([len(k[0]) for k in groups] + [4])
    head = f"{'cell':{w}s}  {'method':18s}" + ("  lr      " if with_lr else "") + \
        "   auc   accuracy  acc(thr)     n"
    out = [head, "-" * len(head)]
    for (cell, method, lr), rs in groups.items():
        mean = {k: statistics.fmean(r[k] for r in rs) for k in ("auc", "accuracy", "accuracy_thresholded")}
        out.append(f"{cell:{w}s}  {method:18s}" + (f"  {lr:8s}" if with_lr else "") +
                   f"  {mean['auc']:6.2f}  {mean['accuracy']:8.2f}  {mean['accuracy_thresholded']:8.2f}  {len(rs):4d}")
    return "\n".join(out)


def _error_message(err) -> str:
    text = str(err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # Ray wraps the trial's exception in a traceback; its last line names the original error.
    return lines[-1].strip() if lines else type(err).__name__


def _move_tracking(plan: Plan) -> None:
    """`--resume --tracking-uri NEW` for a sweep pinned to another URI (the head node was replaced and its
    MLflow server has a new address): log to NEW from now on, and record it in the sweep's state."""
    TRACKING_REDIRECT[plan.sweep] = plan.tracking_uri
    meta_path = plan.sweep_dir / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta["tracking_uri_history"] = meta.get("tracking_uri_history", []) + [
        {"tracking_uri": plan.moved_from, "until": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
    meta["tracking_uri"] = plan.tracking_uri
    meta_path.write_text(json.dumps(meta, indent=1))
    print(f"[sweep {plan.sweep}] tracking server moved: {plan.moved_from} -> {plan.tracking_uri}", flush=True)


def run_sweep(plan: Plan, a) -> int:
    from .tracking import Tracker
    tracker = Tracker(plan.tracking_uri, plan.sweep)          # creates the experiment (and the store)
    _TRACKING_URIS[plan.sweep] = plan.tracking_uri
    _LOGGERS.pop(plan.sweep, None)
    started = _init_ray(a)
    try:
        trainable = tune.with_resources(train_pack, {"cpu": a.cpus_per_trial, "gpu": a.gpus_per_trial})
        if a.resume:
            print(f"[sweep {plan.sweep}] resuming {plan.sweep_dir}", flush=True)
            if plan.moved_from:
                _move_tracking(plan)
            tuner = tune.Tuner.restore(str(plan.sweep_dir), trainable=trainable, resume_errored=True)
        else:
            plan.sweep_dir.mkdir(parents=True, exist_ok=True)
            (plan.sweep_dir / META_FILE).write_text(json.dumps({
                "sweep": plan.sweep, "preset": a.preset, "argv": [redact(x) for x in a.argv],
                "tracking_uri": redact(plan.tracking_uri),
                "n_trials": plan.n_trials, "n_networks": plan.n_networks, "pack_size": plan.pack_size,
                "data": plan.data,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1))
            print(f"[sweep {plan.sweep}] {plan.n_networks} networks in {plan.n_trials} trials (packs of "
                  f"{plan.pack_size}); "
                  f"Tune state {plan.sweep_dir}; MLflow {redact(plan.tracking_uri)}", flush=True)
            tuner = tune.Tuner(
                trainable,
                param_space={"pack": tune.grid_search([[dataclasses.asdict(c) for c in p] for p in plan.packs])},
                tune_config=tune.TuneConfig(max_concurrent_trials=a.max_concurrent, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=plan.sweep, storage_path=str(plan.sweep_dir.parent), verbose=0,
                    failure_config=tune.FailureConfig(max_failures=a.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),   # a pack's latest progress
                    callbacks=[MlflowLogger(plan.tracking_uri, plan.sweep, a.tracking_retry_s),
                               Progress(plan.sweep, plan.n_trials, plan.n_networks)]))
        try:
            results = tuner.fit()
        except KeyboardInterrupt:
            print(f"[sweep {plan.sweep}] interrupted; continue with --resume --name {plan.sweep}", file=sys.stderr)
            return 130
    finally:
        if started:
            ray.shutdown()

    # Reconcile: every network of every finished trial must be in MLflow (covers a driver killed
    # between a trial's end and its logging, and logging errors during the sweep).
    done: list[tuple[TrialConfig, dict, str]] = []
    failed: list[tuple[list[TrialConfig], str]] = []
    trials_by_path = None
    for r in results:
        packed = (r.config or {}).get("pack")
        if packed is None:              # a trial that failed before reporting: its config is in Tune's state
            if trials_by_path is None:
                trials_by_path = {t.path: t for t in tune.ExperimentAnalysis(results.experiment_path).trials}
            packed = trials_by_path[r.path].config["pack"]
        configs = [TrialConfig.from_dict(d) for d in packed]
        if r.error is not None or "networks" not in (r.metrics or {}):
            failed.append((configs, _error_message(r.error) if r.error is not None else "no result reported"))
        else:
            networks = json.loads(r.metrics["networks"])
            done += [(c, res, r.metrics.get("trial_id", "")) for c, res in zip(configs, networks)]
    from .tracking import TrackingUnavailable, trial_key
    logger = _LOGGERS.get(plan.sweep)
    patience = logger.patience if logger else Patience(a.tracking_retry_s, lambda m: print(f"[sweep {plan.sweep}] {m}"))
    logged, log_errors = 0, []
    try:
        have = patience.call(tracker.existing_keys, "the check of what MLflow holds")
    except TrackingUnavailable as e:           # the server is still away: nothing more can be logged now
        this_session = logger.logged if logger else set()
        have = None
        log_errors = [f"{describe(c)}: {e}" for c, _, _ in done if trial_key(c, plan.sweep) not in this_session]
    for c, res, pack_id in done if have is not None else []:
        if trial_key(c, plan.sweep) in have:
            continue
        try:
            logged += patience.call(lambda: tracker.log_network(c, res, pack_id), describe(c))
        except Exception as e:  # noqa: BLE001
            log_errors.append(f"{describe(c)}: {type(e).__name__}: {e}")
    # always printed: 0 after a sweep whose per-result logging did its job (tests/test_full_grid.py)
    print(f"[sweep {plan.sweep}] reconciliation: logged {logged} finished networks that were missing from MLflow")

    print()
    if done:
        print(_results_table([(c, r) for c, r, _ in done]))
        print()
    print(f"[sweep {plan.sweep}] {len(done)} networks finished, {sum(len(f[0]) for f in failed)} failed "
          f"({len(failed)} trials)")
    for configs, msg in failed:
        print(f"  FAILED trial: {msg}")
        for c in configs:
            print(f"    {describe(c)}  {json.dumps(dataclasses.asdict(c))}")
    for msg in log_errors:
        print(f"  NOT LOGGED to MLflow: {msg}")
    if log_errors:
        print(f"  {len(log_errors)} finished networks are not in MLflow; once {redact(plan.tracking_uri)} answers, "
              f"log them (no retraining) with: --resume --name {plan.sweep}")
    if logger and logger.patience.outages:
        print(f"  MLflow was unreachable {len(logger.patience.outages)} time(s): "
              + ", ".join(f"{s:.0f} s ({n} retries)" for s, n in logger.patience.outages)
              + ("" if log_errors else "; nothing lost"))
    if failed:
        print(f"  re-run the failed trials with: --resume --name {plan.sweep}")
    print(tracker.ui_hint())
    return 1 if failed or log_errors else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        a = _parser().parse_args(argv)
    except SystemExit as e:                      # argparse: --help (0) or a malformed option (2, message printed)
        return int(e.code or 0)
    a.argv = argv
    if a.gpus is not None and a.gpus_per_trial == 0:
        a.gpus_per_trial = 1.0                  # --gpus: an estimate for GPU trials
    try:
        plan = plan_sweep(a)
        if a.dry_run:
            if a.resume:
                print(f"[dry-run] sweep {plan.sweep} at {plan.sweep_dir}: {plan.n_networks:,} networks in "
                      f"{plan.n_trials:,} trials; MLflow {redact(plan.tracking_uri)}")
            else:
                print(dry_run_report(plan, a))
            return 0
        try:
            check_tracking_uri(plan.tracking_uri)
        except TrackingError as e:
            if a.resume and not a.tracking_uri and plan.tracking_uri.startswith(("http://", "https://")):
                raise TrackingError(f"{e}. If the head node (and its MLflow server) moved, point the sweep at "
                                    f"the new one: --resume --tracking-uri http://NEW-HEAD-IP:5000") from None
            raise
        saved = {k: os.environ.get(k) for k in MLFLOW_HTTP_ENV}
        os.environ.update({k: v for k, v in MLFLOW_HTTP_ENV.items() if saved[k] is None})
        try:
            return run_sweep(plan, a)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
    except (UsageError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except http.client.HTTPException as e:      # a URL that urllib rejects late (e.g. a control character)
        print(f"error: tracking URI {getattr(a, 'tracking_uri', None)!r}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
