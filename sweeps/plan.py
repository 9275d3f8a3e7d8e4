"""Planning a sweep: its options (typed), the networks and packs of a preset, and the dry-run estimate.

Everything here runs on the driver and needs neither Ray's workers nor a tracking server: bad input is
refused (UsageError, naming the value and what is allowed) before anything starts.

    opts = parse_options(["--preset", "mnist", "--rho", "10"])      # SweepOptions (a frozen dataclass)
    plan = plan_sweep(opts)                                         # Plan: packs of TrialConfig, URIs
    print(dry_run_report(plan, opts))

Pack size (`--pack-size auto`): on CPU trials, one pack per (cell, seed) group (every shared first phase is
shared); on GPU trials, up to `packing.MAX_STACK` networks per trial, and each GPU worker stacks as many
of them at once as its own GPU's memory holds (`imbalance_core.packing.auto_pack_size`, resolved on the
worker by `run_trials`): the driver, often a CPU head, needs no GPU to size them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune

from imbalance_core.datasets import DatasetError, load_dataset
from imbalance_core.trial import TrialConfig

from . import grids
from .grids import Overrides, cell_of
from .packs import largest_group, pack, training_images
from .tracking import default_tracking_uri, local_store_dir, redact, trial_key

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


def duration(s: float) -> str:
    """Seconds as '45s', '3m05s' or '2h40m'."""
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class UsageError(ValueError):
    """Bad input: reported as one line, exit status 2, before Ray starts."""


@dataclass(frozen=True)
class SweepOptions:
    """Every option of `python sweeps/full_grid.py` (see `--help`); `parse_options` builds one from argv."""
    # the grid: a preset and its overrides from the command line (grids.Overrides: None = the preset's own)
    preset: str = "quick"
    grid: Overrides = Overrides()
    # the sweep
    name: str | None = None                 # sweep name = MLflow experiment = Tune experiment folder
    tracking_uri: str | None = None
    storage_path: str | None = None
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    pack_size: int | str = "auto"
    max_failures: int = 2
    max_concurrent: int | None = None
    tracking_retry_s: float = DEFAULT_TRACKING_RETRY_S
    resume: bool = False
    gpu_memory_gb: float | None = None
    allow_tf32: bool = False
    checkpoint_every_min: float = 10.0      # inside a phase (0: only between phases)
    log_processes: int = 1
    rehearse: bool = False
    dry_run: bool = False
    # the --dry-run cost estimate
    gpus: int | None = None
    price_per_gpu_hour: float = DEFAULT_PRICE_PER_GPU_HOUR
    argv: tuple[str, ...] = ()              # as given (recorded in the sweep's state, passwords redacted)

    @property
    def sweep(self) -> str:
        """The sweep's name (Tune folder, MLflow experiment); a rehearsal's ends in -rehearsal, so that it
        never mixes with the real sweep's state or runs."""
        name = self.name or self.preset
        return f"{name}-rehearsal" if self.rehearse and not name.endswith("-rehearsal") else name

    @property
    def trial_options(self) -> dict:
        """What every trial of the sweep is told besides its pack (the trainable reads them): TF32, and how
        often it checkpoints inside a phase (None: only between phases)."""
        every = self.checkpoint_every_min * 60.0 if self.checkpoint_every_min > 0 else None
        return {"allow_tf32": self.allow_tf32, "checkpoint_every_s": every}


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
    g.add_argument("--levels", nargs="+", type=float,
                   help="replace the levels of the methods that sample to one (needs_level: partial ROS/RUS)")
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
    s.add_argument("--allow-tf32", action="store_true",
                   help="let CUDA run convolutions and matmuls in TF32 (faster on Ampere/Hopper; the default is "
                        "FP32, as the published results; every run records its setting, `tf32`)")
    s.add_argument("--checkpoint-every-min", dest="checkpoint_every_min", type=float, default=10.0,
                   help="checkpoint a pack every M minutes inside a training phase (default 10), so that a lost "
                        "node or a reclaimed spot instance costs minutes of a long phase (CIFAR-10, ImageNet), "
                        "not the phase; 0: only between phases. The resumed phase is bit-identical")
    s.add_argument("--log-processes", dest="log_processes", type=int, default=1,
                   help="processes logging finished packs to MLflow, beside the driver (default 1): MLflow's store "
                        "work runs there, off the Tune loop; more log in parallel where the machine has the cores")
    s.add_argument("--rehearse", action="store_true",
                   help="run the whole plan through Tune and MLflow without training: every network gets a "
                        "synthetic result of the real shape, logged to the experiment <name>-rehearsal "
                        "(tag rehearsal=true); sizes the driver for a cluster (benchmarks/rehearsal.py)")
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
    """`--pack-size auto`: networks per trial. CPU trials: the networks of one (cell, seed), so that every
    shared first phase is shared. GPU trials: as many as a GPU of `gpu_memory_gb` stacks, else
    packing.MAX_STACK; either way the worker stacks at once only what its own GPU's memory holds
    (run_trials, packing.auto_pack_size), so the driver (a CPU head) needs no GPU to size them."""
    from imbalance_core import packing
    if gpus_per_trial <= 0:
        return largest_group(configs), "auto: CPU pack"
    if gpu_memory_gb is not None:
        size = min(packing.stack_size(c.model, c.schedule.batch_size, gpu_memory_gb * 2 ** 30)
                   for c in {(c.model, c.schedule.batch_size): c for c in configs}.values())
        return size, f"auto: a {gpu_memory_gb:g} GB GPU (--gpu-memory-gb)"
    return packing.MAX_STACK, "auto: GPU trials; each worker stacks as many as its GPU's memory holds"


def parse_options(argv: list[str]) -> SweepOptions:
    """SweepOptions from command-line arguments; SystemExit as argparse does (--help: 0, bad syntax: 2)."""
    ns = _parser().parse_args(argv)
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(SweepOptions) if hasattr(ns, f.name)}
    if ns.gpus is not None and ns.gpus_per_trial == 0:
        values["gpus_per_trial"] = 1.0            # --gpus: an estimate for GPU trials
    grid = Overrides(**{f.name: getattr(ns, "lr" if f.name == "lrs" else f.name, None)
                        for f in dataclasses.fields(Overrides)})
    grid = dataclasses.replace(grid, **{f.name: tuple(v) for f in dataclasses.fields(grid)
                                        if isinstance(v := getattr(grid, f.name), list)})
    if grid.data_dir:
        grid = dataclasses.replace(grid, data_dir=os.path.abspath(grid.data_dir))   # workers run in other folders
    return SweepOptions(**values, grid=grid, argv=tuple(argv))


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
    rehearsal: bool = False          # --rehearse: synthetic results, experiment <name>-rehearsal


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


def _check_resources(opts: SweepOptions) -> None:
    for name in ("cpus_per_trial", "gpus_per_trial"):
        v = getattr(opts, name)
        if not (math.isfinite(v) and v >= 0):
            raise UsageError(f"--{name.replace('_', '-')} {v:g} is not allowed: need a number >= 0")
    if opts.cpus_per_trial == 0 and opts.gpus_per_trial == 0:
        raise UsageError("--cpus-per-trial 0 with --gpus-per-trial 0: a trial needs some resource")
    if opts.max_failures < 0:
        raise UsageError(f"--max-failures {opts.max_failures} is not allowed: need an integer >= 0")
    if not (math.isfinite(opts.tracking_retry_s) and opts.tracking_retry_s >= 0):
        raise UsageError(f"--tracking-retry-s {opts.tracking_retry_s:g} is not allowed: need a number of seconds >= 0")
    if not (math.isfinite(opts.checkpoint_every_min) and opts.checkpoint_every_min >= 0):
        raise UsageError(f"--checkpoint-every-min {opts.checkpoint_every_min:g} is not allowed: need minutes >= 0 "
                         "(0: only between phases)")
    if opts.log_processes < 1:
        raise UsageError(f"--log-processes {opts.log_processes} is not allowed: need an integer >= 1")
    if opts.max_concurrent is not None and opts.max_concurrent < 1:
        raise UsageError(f"--max-concurrent {opts.max_concurrent} is not allowed: need an integer >= 1")
    if opts.pack_size != "auto" and opts.pack_size < 1:
        raise UsageError(f"--pack-size {opts.pack_size} is not allowed: need an integer >= 1")
    if opts.gpu_memory_gb is not None and not (math.isfinite(opts.gpu_memory_gb) and opts.gpu_memory_gb > 0):
        raise UsageError(f"--gpu-memory-gb {opts.gpu_memory_gb:g} is not allowed: need a number of GB > 0")
    if opts.gpus is not None:
        if not opts.dry_run:
            raise UsageError("--gpus sizes the --dry-run estimate only; add --dry-run (a sweep uses what the "
                             "cluster has)")
        if opts.gpus < 1:
            raise UsageError(f"--gpus {opts.gpus} is not allowed: need an integer >= 1")
        if opts.gpus_per_trial > opts.gpus:
            raise UsageError(f"--gpus-per-trial {opts.gpus_per_trial:g} exceeds --gpus {opts.gpus}")
    if not (math.isfinite(opts.price_per_gpu_hour) and opts.price_per_gpu_hour >= 0):
        raise UsageError(f"--price-per-gpu-hour {opts.price_per_gpu_hour:g} is not allowed: need US$ >= 0")
    if opts.dry_run and opts.gpus is not None:
        return                                   # an estimate for a cluster, not for this machine's Ray
    if not (opts.address or os.environ.get("RAY_ADDRESS")):     # local Ray: a bigger trial would wait forever
        if ray.is_initialized():
            have = ray.cluster_resources()
            cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
        else:
            import torch
            cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
        if opts.cpus_per_trial > cpus:
            raise UsageError(f"--cpus-per-trial {opts.cpus_per_trial:g} exceeds the {cpus:g} CPUs of the local Ray")
        if opts.gpus_per_trial > gpus:
            raise UsageError(f"--gpus-per-trial {opts.gpus_per_trial:g} exceeds the {gpus:g} GPUs of the local Ray")


def _check_data(data) -> None:
    for dataset, data_dir in data:
        try:
            load_dataset(dataset, data_dir)
        except DatasetError as e:
            raise UsageError(f"--data-dir {data_dir}: {e}") from None


def plan_sweep(opts: SweepOptions) -> Plan:
    """Every check that needs neither Ray nor a tracking server; raises UsageError naming the bad value."""
    _check_resources(opts)
    if opts.preset not in grids.PRESETS:
        raise UsageError(f"preset {opts.preset!r} is unknown; choose one of {', '.join(grids.PRESETS)}")
    sweep = opts.sweep
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", sweep):
        raise UsageError(f"--name {sweep!r} is not allowed: use letters, digits, '.', '_' and '-'")
    storage = Path(opts.storage_path or Path.cwd() / "runs" / "ray").resolve()
    sweep_dir = storage / sweep
    exists = tune.Tuner.can_restore(str(sweep_dir))
    if opts.resume:
        if not exists:
            raise UsageError(f"--resume: no sweep to resume at {sweep_dir} (no Tune state there); "
                             f"check --name and --storage-path")
        meta = json.loads((sweep_dir / META_FILE).read_text()) if (sweep_dir / META_FILE).is_file() else {}
        pinned = meta.get("tracking_uri")           # without its password (redacted)
        env = os.environ.get("MLFLOW_TRACKING_URI")
        uri = opts.tracking_uri or (env if env and pinned and redact(env) == redact(pinned) else None) \
            or pinned or default_tracking_uri()
        if "***" in uri:
            raise UsageError(f"--resume: sweep {sweep!r} logs to {pinned}: pass its --tracking-uri with the "
                             f"password (or set MLFLOW_TRACKING_URI, or put the password in ~/.pgpass)")
        # a different --tracking-uri moves the sweep to a new tracking server (a replaced head: _move_tracking)
        uri = normalize_tracking_uri(uri, "--tracking-uri" if opts.tracking_uri else f"the tracking URI of sweep {sweep!r}")
        data = [tuple(d) for d in meta.get("data", [])]
        _check_data(data)
        return Plan(sweep, sweep_dir, uri, [], meta.get("pack_size", "?"), meta.get("n_trials", 0),
                    meta.get("n_networks", 0), data,
                    moved_from=pinned if pinned and redact(uri) != redact(pinned) else None,
                    rehearsal=bool(meta.get("rehearse", False)))
    if exists:
        raise UsageError(f"sweep {sweep!r} already exists at {sweep_dir}: add --resume to continue it, "
                         f"or choose another --name")
    grid = grids.PRESETS[opts.preset]
    try:
        configs = grids.expand(grid, opts.grid)
    except ValueError as e:
        raise UsageError(str(e)) from None
    data = list(dict.fromkeys((c.dataset, c.data_dir) for c in configs))
    _check_data(data)
    if opts.pack_size == "auto":
        size, how = auto_pack_size(configs, opts.gpus_per_trial, opts.gpu_memory_gb)
    else:
        size, how = opts.pack_size, "--pack-size"
    packs = pack(configs, size, whole_groups=opts.pack_size == "auto" and opts.gpus_per_trial <= 0)
    uri = normalize_tracking_uri(opts.tracking_uri or default_tracking_uri(),
                                 "--tracking-uri" if opts.tracking_uri else "$MLFLOW_TRACKING_URI")
    return Plan(sweep, sweep_dir, uri, packs, f"<= {size} ({how})",
                len(packs), len(configs), data, rehearsal=opts.rehearse)


def without_logged(plan: Plan, logged: set[str]) -> tuple[Plan, int]:
    """The plan less the networks whose trial key MLflow already holds as FINISHED (a sweep that logs into
    a store holding its earlier networks, e.g. a published page grown by more seeds: they are not trained
    again); packs left empty are dropped. (plan, networks dropped)."""
    packs = [kept for p in plan.packs if (kept := [c for c in p if trial_key(c, plan.sweep) not in logged])]
    n = sum(map(len, packs))
    return dataclasses.replace(plan, packs=packs, n_trials=len(packs), n_networks=n), plan.n_networks - n


def logged_keys(uri: str, sweep: str) -> set[str] | None:
    """The FINISHED trial keys of `sweep` in an embedded store that exists (for --dry-run, which starts
    no tracking server); None for another store or a missing file."""
    folder = local_store_dir(uri)
    if folder is None or not Path(uri.removeprefix("sqlite:///")).is_file():
        return None
    from mlflow.tracking import MlflowClient
    from .tracking import Tracker
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(sweep)
    if exp is None or exp.lifecycle_stage != "active":
        return None
    return Tracker(uri, sweep).existing_keys()


def pack_seconds(pack_: list[TrialConfig], device: str, per_trial: float) -> float:
    """Assumed training time of one pack (ASSUMED_IMAGES_PER_SECOND) with `per_trial` CPUs or GPUs."""
    return training_images(pack_) / (ASSUMED_IMAGES_PER_SECOND[pack_[0].model][device] * max(per_trial, 1e-9))


def cluster_estimate(plan: Plan, opts: SweepOptions, seconds: float) -> dict:
    """Wall time and cost of a GPU sweep on `opts.gpus` GPUs: trials run `gpus // gpus_per_trial` at once (at
    most --max-concurrent), each taking the next free slot (longest first, as a list schedule); every GPU
    is paid for the whole wall time."""
    import heapq
    slots = int(opts.gpus // opts.gpus_per_trial)
    slots = max(1, min(slots, plan.n_trials, opts.max_concurrent or slots))
    ends = [0.0] * slots
    for t in sorted((pack_seconds(p, "gpu", opts.gpus_per_trial) for p in plan.packs), reverse=True):
        heapq.heappush(ends, heapq.heappop(ends) + t)
    wall = max(ends, default=0.0)
    return {"slots": slots, "wall_s": wall, "cost": opts.gpus * wall / 3600 * opts.price_per_gpu_hour}


def dry_run_report(plan: Plan, opts: SweepOptions) -> str:
    device = "gpu" if opts.gpus_per_trial > 0 else "cpu"
    per_trial = opts.gpus_per_trial if device == "gpu" else opts.cpus_per_trial
    images, seconds = 0, 0.0
    for p in plan.packs:
        images += training_images(p)
        seconds += pack_seconds(p, device, per_trial)
    models = sorted({p[0].model for p in plan.packs})
    assumed = ", ".join(f"{m} {ASSUMED_IMAGES_PER_SECOND[m][device]:,} img/s per {device.upper()}" for m in models)
    lines = [
        *(["[dry-run] a rehearsal (--rehearse): nothing is trained; the figures below are the real sweep's"]
          if plan.rehearsal else []),
        f"[dry-run] sweep {plan.sweep}: {plan.n_networks:,} networks in {plan.n_trials:,} trials (packs of "
        f"{plan.pack_size}), {len({cell_of(c) for p in plan.packs for c in p}):,} cells",
        f"  training images: {images:,} (iterations x batch per network and phase; a pack trains the shared "
        f"first phase of two-phase networks once)",
        f"  estimated compute: {duration(seconds)} of trial time at {per_trial:g} {device.upper()}(s) per trial, "
        f"assuming {assumed} (start-up, evaluation and logging not included)",
    ]
    if device == "gpu":
        gpu_hours = seconds * per_trial / 3600
        lines.append(f"  GPU-hours: {gpu_hours:,.1f} (= {gpu_hours * opts.price_per_gpu_hour:,.2f} US$ of GPU time at "
                     f"{opts.price_per_gpu_hour:g} US$ per GPU-hour, --price-per-gpu-hour)")
        if opts.gpus is not None:
            est = cluster_estimate(plan, opts, seconds)
            lines.append(f"  on {opts.gpus} GPU{'s' if opts.gpus != 1 else ''}: {est['slots']} trials at once -> about {duration(est['wall_s'])} "
                         f"wall time; cost about {est['cost']:,.2f} US$ ({opts.gpus} GPUs x {est['wall_s'] / 3600:,.2f} h "
                         f"x {opts.price_per_gpu_hour:g} US$; the CPU head, node start-up and storage not included)")
    if opts.gpus is None and not (opts.address or os.environ.get("RAY_ADDRESS")):
        import torch
        slots = int((torch.cuda.device_count() if device == "gpu" else os.cpu_count() or 1) // max(per_trial, 1e-9))
        slots = max(1, min(slots, plan.n_trials, opts.max_concurrent or slots))
        lines.append(f"  on this machine: {slots} trials at once -> about {duration(seconds / slots)} wall time")
    lines.append(f"  Tune state: {plan.sweep_dir}; MLflow: {redact(plan.tracking_uri)}")
    return "\n".join(lines)


