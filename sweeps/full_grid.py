#!/usr/bin/env python
"""Run a grid of the study as a Ray Tune sweep; every trained network becomes one MLflow run.

    python sweeps/full_grid.py [--preset quick] [--datasets ..] [--methods ..] [--rho ..] [--mu ..]
        [--imbalance ..] [--repetitions N] [--iterations N] [--data-dir DIR] [--name NAME]
        [--tracking-uri URI] [--storage-path DIR] [--address ADDR] [--cpus-per-trial 1]
        [--gpus-per-trial 0] [--pack-size N] [--gpu-memory-gb G] [--max-failures 2] [--max-concurrent N]
        [--tracking-retry-s 600] [--resume] [--rehearse] [--dry-run [--gpus N] [--price-per-gpu-hour P]]

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

`--rehearse` runs the same plan through the same Tune and MLflow path without training (synthetic
results of the real shape, experiment `<name>-rehearsal`, tag rehearsal=true): a driver check for a
cluster (benchmarks/rehearsal.py).

The modules, in the order a network passes through them: `sweeps.plan` (options, grid -> packs),
this file (Ray, Tune, progress, the summary), `sweeps.trainable` (on a worker: run_trials; its checkpoints
`sweeps.checkpoint`), `sweeps.mlflow_callback` (on the driver: one MLflow run per network through
`sweeps.logging_process` and `sweeps.tracking`), `sweeps.reconcile` (what the sweep did not log).

Ray: local by default (`ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=<CUDA devices>)`), with
every Ray process of it (GCS, raylet, agents, workers, this driver) listening on 127.0.0.1 only;
`--address auto` (or $RAY_ADDRESS) joins a running cluster, e.g. one started by `ray up cluster.yaml`, with
token auth: RAY_AUTH_MODE=token for `ray start` and for this script, the cluster's token in ~/.ray/auth_token
(docs/cluster.md). The driver refuses RAY_AUTH_MODE=disabled for a cluster whose address is not a loopback one
(exit 2). If Ray is already initialised in this process (tests), that instance is used and left running.

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

import dataclasses
import http.client
import json
import os
import statistics
import time

import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.search import Searcher

from imbalance_core.result import ACCURACY, ACCURACY_THRESHOLDED, AUC
from imbalance_core.trial import TrialConfig

from .checkpoint import is_final, pack_results
from .driver_cost import DriverCost
from .grids import cell_of, describe
# The names below are also this module's: Tune pickles the sweep's callbacks (tuner.pkl), and tests reach the
# sweep's session (SESSIONS) here.
from .mlflow_callback import SESSIONS, MlflowLogger, SweepSession, open_session  # noqa: F401
from .reconcile import reconcile
from .plan import (DEFAULT_PRICE_PER_GPU_HOUR, DEFAULT_TRACKING_RETRY_S, META_FILE, Plan,  # noqa: F401
                   SweepOptions, UsageError, dry_run_report, duration, logged_keys, normalize_tracking_uri,
                   parse_options, plan_sweep, without_logged)
from .trainable import rehearse_pack, train_pack
from .tracking import REPO_ROOT, TrackingError, check_tracking_uri, redact

CHECKPOINTS_KEPT = 4                     # per trial (tune.CheckpointConfig(num_to_keep)); see run_sweep
# The driver's environment while a sweep runs (a value the user set is kept):
# - MLflow's HTTP client would otherwise retry an absent server silently for minutes per request
#   (7 retries, backoff factor 2): the sweep retries itself (Patience) and says so.
# - Tune adds a CSV, a JSON and a TensorBoard logger of every trial's results unless this is set; the sweep
#   keeps the JSON one (each trial's result.json, next to its checkpoints) and drops the other two, which
#   nothing here reads (measured: benchmarks/results/tune_loggers_cpu.txt).
# - Tune keeps at most 1 trial pending for a search algorithm other than its own grid/random one (`Packs`),
#   which would start trials one at a time and show an autoscaler one trial's demand; 200 is what Tune
#   gives its grid search (at least; more on clusters of over 180 CPUs).
DRIVER_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
              "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "TUNE_MAX_PENDING_TRIALS_PG": "200"}


class Progress(tune.Callback):
    """Prints `[sweep NAME] 12/30 networks done (4/15 trials), 2 running, 0 failed, elapsed 1m20s, ~2m10s left`
    whenever a trial ends, and every `every_s` seconds otherwise. Networks done counts those of running packs
    too (their last progress report), so that a long pack shows its progress before it ends."""

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
        done = [i for i, s in status.items() if s == "done"]
        # networks of ended trials, and those a running pack has reported finished (its checkpoints)
        nets = sum(len(t.config["pack"]) if status[t.trial_id] == "done" else
                   int((t.last_result or {}).get("networks_done", 0)) if status[t.trial_id] == "running" else 0
                   for t in trials)
        if self.base_networks is None:
            self.base_networks = nets
        elapsed = time.monotonic() - self.t0
        rate = (nets - self.base_networks) / elapsed if elapsed > 0 else 0.0
        left = f"~{duration((self.n_networks - nets) / rate)} left" if rate > 0 else "time left unknown yet"
        running = sum(s == "running" for s in status.values())
        failed = sum(s == "failed" for s in status.values())
        session = SESSIONS.get(self.sweep)       # Tune restores this callback too: its sweep's session, by name
        logger = session.logger if session is not None else None
        return (f"[sweep {self.sweep}] {nets}/{self.n_networks} networks done ({len(done)}/{self.n_trials} trials), "
                f"{running} running, {failed} failed, elapsed {duration(elapsed)}, {left}"
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


class Packs(Searcher):
    """Tune's search algorithm for a sweep: one trial per pack, in plan order (config {"pack": [...]}).

    Not `tune.grid_search(packs)`: Tune's grid generator deep-copies the whole search space, every pack
    included, for each trial it creates, so its cost grows with the square of the number of packs
    (benchmarks/tune_trial_generation.py; docs/performance.md, "The driver at scale"). A searcher's
    suggestion is copied alone. Tune saves its state (`save`/`restore`) with the experiment's,
    so `--resume` suggests the packs not yet started. `options`: added to every trial's config
    (SweepOptions.trial_options: TF32, checkpoints inside a phase)."""

    def __init__(self, packs: list[list[dict]] | None = None, options: dict | None = None):
        super().__init__()
        self.packs, self.next, self.options = packs or [], 0, dict(options or {})

    def suggest(self, trial_id: str):
        if self.next >= len(self.packs):
            return Searcher.FINISHED
        self.next += 1
        return {"pack": self.packs[self.next - 1], **self.options}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        pass                                       # nothing to learn: every pack runs once (Tune retries failures)

    def save(self, checkpoint_path: str):
        Path(checkpoint_path).write_text(json.dumps({"packs": self.packs, "next": self.next,
                                                     "options": self.options}))

    def restore(self, checkpoint_path: str):
        state = json.loads(Path(checkpoint_path).read_text())
        self.packs, self.next = state["packs"], state["next"]
        # a sweep started before `options` saved only its TF32 setting (and checkpointed between phases only)
        self.options = state.get("options", {"allow_tf32": bool(state.get("allow_tf32", False)),
                                             "checkpoint_every_s": None})


# --------------------------------------------------------------------------- the sweep

def _init_ray(opts: SweepOptions) -> bool:
    """Start or join Ray; True if this call started it (and must shut it down).

    A local Ray listens on 127.0.0.1 only. Ray binds its gRPC servers (GCS, raylet, every worker, this
    driver) to 127.0.0.1 when the node's address is 127.0.0.1 and to all interfaces otherwise, and on Linux
    it turns 127.0.0.1 into the machine's routable address unless Ray's "no multi-node cluster" switch is off
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read into `ray_constants.ENABLE_RAY_CLUSTER` when ray is imported,
    so it is set on the module too, while the local instance starts: `compat.loopback_only`; the processes it
    starts inherit it).
    Joining a cluster: refused (UsageError, exit 2) with RAY_AUTH_MODE=disabled unless its address is
    loopback (sweeps.cluster.refuse_unauthenticated_cluster)."""
    if ray.is_initialized():
        return False
    address = opts.address or os.environ.get("RAY_ADDRESS")
    # Workers import `sweeps.full_grid.train_pack`: put the repository on their path (Ray itself adds
    # only the driver's script folder and working directory). On a cluster the repository must sit at
    # the same path on every node (or be installed there).
    job_config = ray.job_config.JobConfig(code_search_path=[str(REPO_ROOT)])
    if address and address != "local":
        from .cluster import refuse_unauthenticated_cluster
        reason = refuse_unauthenticated_cluster(address, os.environ.get("RAY_AUTH_MODE"))
        if reason:
            raise UsageError(reason)
        ray.init(address=address, job_config=job_config)
        return True
    import torch

    from . import compat
    with compat.loopback_only():
        compat.init_local_ray(num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(), include_dashboard=False,
                              job_config=job_config, node_ip_address="127.0.0.1")
    node_ip = ray.util.get_node_ip_address()
    if node_ip != "127.0.0.1":                     # a Ray that no longer honours the switch: say so, loudly
        print(f"warning: the local Ray's node address is {node_ip}, not 127.0.0.1: its processes listen on "
              f"every interface", file=sys.stderr, flush=True)
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
        auc, acc, thr = (statistics.fmean(r[k] for r in rs) for k in (AUC, ACCURACY, ACCURACY_THRESHOLDED))
        out.append(f"{cell:{w}s}  {method:18s}" + (f"  {lr:8s}" if with_lr else "") +
                   f"  {auc:6.2f}  {acc:8.2f}  {thr:8.2f}  {len(rs):4d}")
    return "\n".join(out)


def _error_message(err) -> str:
    text = str(err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # Ray wraps the trial's exception in a traceback; its last line names the original error.
    return lines[-1].strip() if lines else type(err).__name__


def _move_tracking(plan: Plan, session: SweepSession) -> None:
    """`--resume --tracking-uri NEW` for a sweep pinned to another URI (the head node was replaced and its
    MLflow server has a new address): log to NEW from now on, and record it in the sweep's state."""
    session.moved = True
    meta_path = plan.sweep_dir / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta["tracking_uri_history"] = meta.get("tracking_uri_history", []) + [
        {"tracking_uri": plan.moved_from, "until": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
    meta["tracking_uri"] = plan.tracking_uri
    meta_path.write_text(json.dumps(meta, indent=1))
    print(f"[sweep {plan.sweep}] tracking server moved: {plan.moved_from} -> {plan.tracking_uri}", flush=True)


def run_sweep(plan: Plan, opts: SweepOptions) -> int:
    from .tracking import Tracker
    cost = DriverCost()
    tracker = Tracker(plan.tracking_uri, plan.sweep, plan.rehearsal)   # creates the experiment (and the store)
    session = open_session(plan.sweep, plan.tracking_uri, plan.rehearsal)
    session.prestart()                                             # reads MLflow's runs while Ray starts
    started = False
    try:
        started = _init_ray(opts)
        trainable = tune.with_resources(rehearse_pack if plan.rehearsal else train_pack,
                                        {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})
        if opts.resume:
            print(f"[sweep {plan.sweep}] resuming {plan.sweep_dir}", flush=True)
            if plan.moved_from:
                _move_tracking(plan, session)
            tuner = tune.Tuner.restore(str(plan.sweep_dir), trainable=trainable, resume_errored=True)
        else:
            plan, dropped = without_logged(plan, tracker.existing_keys())
            if dropped:
                print(f"[sweep {plan.sweep}] {dropped} networks of this plan are already in MLflow (FINISHED): "
                      f"not trained again", flush=True)
            plan.sweep_dir.mkdir(parents=True, exist_ok=True)
            (plan.sweep_dir / META_FILE).write_text(json.dumps({
                "sweep": plan.sweep, "preset": opts.preset, "argv": [redact(x) for x in opts.argv],
                "tracking_uri": redact(plan.tracking_uri),
                "n_trials": plan.n_trials, "n_networks": plan.n_networks, "pack_size": plan.pack_size,
                "data": plan.data, "rehearse": plan.rehearsal,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1))
            print(f"[sweep {plan.sweep}] {plan.n_networks} networks in {plan.n_trials} trials (packs of "
                  f"{plan.pack_size}); "
                  f"Tune state {plan.sweep_dir}; MLflow {redact(plan.tracking_uri)}", flush=True)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=Packs([[dataclasses.asdict(c) for c in p] for p in plan.packs],
                                                         opts.trial_options),
                                            num_samples=len(plan.packs), max_concurrent_trials=opts.max_concurrent,
                                            reuse_actors=True),
                run_config=tune.RunConfig(
                    name=plan.sweep, storage_path=str(plan.sweep_dir.parent), verbose=0,
                    failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                    # a pack's latest progress. Tune rewrites its whole experiment state (every trial) whenever a
                    # trial has checkpointed num_to_keep times since the last rewrite: 4 keeps that off a
                    # stacked (GPU) or rehearsed pack's 2-3 steps, so 4,600 trials do not cost 4,600 rewrites
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
                    callbacks=[MlflowLogger(plan.tracking_uri, plan.sweep, opts.tracking_retry_s, plan.rehearsal,
                                            opts.log_processes, session),
                               Progress(plan.sweep, plan.n_trials, plan.n_networks),
                               JsonLoggerCallback()]))
        try:
            results = tuner.fit()
        except KeyboardInterrupt:
            print(f"[sweep {plan.sweep}] interrupted; continue with --resume --name {plan.sweep}", file=sys.stderr)
            return 130
    finally:
        session.discard_prestarted()         # if the logger never took it (Tune failed before its setup)
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
        if r.error is not None or not is_final(r.metrics or {}):
            failed.append((configs, _error_message(r.error) if r.error is not None else "no result reported"))
        else:
            done += [(c, res, r.metrics.get("trial_id", ""))
                     for c, res in zip(configs, pack_results(r.metrics, r.checkpoint))]
    logger = session.logger
    t = time.thread_time()
    logged, log_errors = reconcile(tracker, plan.sweep, done, opts.tracking_retry_s, logger)
    cost.logging_s += time.thread_time() - t
    # always printed: 0 after a sweep whose per-result logging did its job (tests/test_full_grid.py)
    print(f"[sweep {plan.sweep}] reconciliation: logged {logged} finished networks that were missing from MLflow")
    if plan.rehearsal:
        print(f"[sweep {plan.sweep}] rehearsal {cost.line(logger, tracker)}", flush=True)

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
        opts = parse_options(argv)
    except SystemExit as e:                      # argparse: --help (0) or a malformed option (2, message printed)
        return int(e.code or 0)
    try:
        plan = plan_sweep(opts)
        if opts.dry_run:
            if opts.resume:
                print(f"[dry-run] sweep {plan.sweep} at {plan.sweep_dir}: {plan.n_networks:,} networks in "
                      f"{plan.n_trials:,} trials; MLflow {redact(plan.tracking_uri)}")
            else:
                logged = logged_keys(plan.tracking_uri, plan.sweep)
                if logged:
                    plan, dropped = without_logged(plan, logged)
                    print(f"[dry-run] {dropped} networks of this plan are already in MLflow (FINISHED) and are "
                          f"left out below")
                print(dry_run_report(plan, opts))
            return 0
        try:
            check_tracking_uri(plan.tracking_uri)
        except TrackingError as e:
            if opts.resume and not opts.tracking_uri and plan.tracking_uri.startswith(("http://", "https://")):
                raise TrackingError(f"{e}. If the head node (and its MLflow server) moved, point the sweep at "
                                    f"the new one: --resume --tracking-uri http://NEW-HEAD-IP:5000") from None
            raise
        saved = {k: os.environ.get(k) for k in DRIVER_ENV}
        os.environ.update({k: v for k, v in DRIVER_ENV.items() if saved[k] is None})
        try:
            return run_sweep(plan, opts)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
    except (UsageError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except http.client.HTTPException as e:      # a URL that urllib rejects late (e.g. a control character)
        print(f"error: tracking URI {opts.tracking_uri!r}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
