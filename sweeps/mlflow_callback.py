"""The MLflow side of a sweep, on the driver: each finished network becomes one MLflow run, exactly once.

    MlflowLogger    a Tune callback: logs every network of a trial's final report as it arrives, and at the
                    end of the run every finished network MLflow lacks (a driver killed before logging it)
    reconcile       after the sweep: logs what the logger could not (MLflow away past its bound, errors)

Both go through one idempotent path, `tracking.Tracker.log_network` (a network whose FINISHED run exists
is not logged again; a half-logged run of a killed driver is replaced).
"""
from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from pathlib import Path

from ray import tune

from imbalance_core.trial import TrialConfig

from .grids import describe
from .plan import DEFAULT_TRACKING_RETRY_S, duration
from .trainable import is_final, pack_outputs
from .tracking import Patience, redact

_LOGGERS: dict[str, "MlflowLogger"] = {}   # sweep name -> the MlflowLogger Tune set up in this process
_TRACKING_URIS: dict[str, str] = {}        # sweep name -> its tracking URI, password included (not pickled)


TRACKING_REDIRECT: dict[str, str] = {}   # sweep -> tracking URI that replaces the one pinned in its state
_PRESTARTED: dict[str, "LoggingProcess"] = {}   # sweep -> a logging process reading MLflow's runs (`prestart`)


class DriverCost:
    """The driver's own cost since this object was made (a rehearsal prints it; benchmarks/rehearsal.py reads
    it): wall time, the driver process's CPU time split into MLflow logging done in it (the logger's
    threads, the reconciliation; figures drawn there counted apart) and the rest (Tune's event loop,
    callbacks); the CPU of the MLflow logging processes (`LoggingProcess`); the driver's peak memory."""

    def __init__(self):
        import resource
        u = resource.getrusage(resource.RUSAGE_SELF)
        self.t0, self.cpu0 = time.monotonic(), u.ru_utime + u.ru_stime
        self.logging_s = 0.0               # logging CPU counted outside an MlflowLogger (reconciliation)

    def line(self, logger: "MlflowLogger | None" = None, *trackers) -> str:
        import resource
        u = resource.getrusage(resource.RUSAGE_SELF)
        cpu = u.ru_utime + u.ru_stime - self.cpu0
        log = self.logging_s + (logger.cpu_s if logger else 0.0)
        fig = sum(t.figure_cpu_s for t in trackers)
        procs = logger.trackers if logger else []
        return (f"driver: wall {time.monotonic() - self.t0:.1f} s, CPU {cpu:.1f} s = MLflow logging {log - fig:.1f} s "
                f"+ figures {fig:.1f} s + Tune and the rest {cpu - log:.1f} s; {len(procs)} logging processes: "
                f"CPU {sum(p.cpu_s for p in procs):.1f} s (figures {sum(p.figure_cpu_s for p in procs):.1f} s); "
                f"peak memory {u.ru_maxrss / 1024:.0f} MB")


READ_INDEX = "read the index"            # sent to a LoggingProcess instead of an index: it reads MLflow's itself


def _serve(fd: int, uri: str, sweep: str, rehearsal: bool) -> None:
    """A logging process (`LoggingProcess`): its own Tracker (and store connection) with the index of MLflow's
    runs the driver sends first (or READ_INDEX: it reads the index and sends it back with its "ready", None if
    the store did not answer); logs the networks of each list it is sent (a trial's) and replies
    ([(ok, logged or (transient, error)) per network], CPU seconds, figure CPU seconds). After an outage
    error the rest of the list is not tried (the driver retries them one at a time). Ends on None or when
    the driver is gone (its end of the socket closed)."""
    from multiprocessing.connection import Connection

    from .tracking import Tracker, is_transient
    conn = Connection(fd)
    try:
        tracker = Tracker(uri, sweep, rehearsal)
        index = conn.recv()
        if index == READ_INDEX:
            try:
                index = tracker.index_runs()
            except Exception:  # noqa: BLE001 - the server is away: each network is looked up (with retries)
                index = None
            conn.send(("ready", index))
        else:
            tracker.use_index(index)              # read once by the driver (None: each network is looked up)
            conn.send(("ready", None))
    except Exception as e:  # noqa: BLE001 - the driver raises it
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):               # the driver is gone
            return
        if item is None:
            return
        t0, f0 = time.thread_time(), tracker.figure_cpu_s
        outs, away = [], None
        for network in item:
            if away is not None:
                outs.append((False, (True, f"not tried: {away}")))
                continue
            try:
                outs.append((True, tracker.log_network(*network)))
            except Exception as e:  # noqa: BLE001 - sent back as an error of the same kind (transient or not)
                outs.append((False, (is_transient(e), f"{type(e).__name__}: {e}")))
                away = outs[-1][1][1] if outs[-1][1][0] else None
        conn.send((outs, time.thread_time() - t0, tracker.figure_cpu_s - f0))


class LoggingProcess:
    """A `Tracker` in a child process: `log_network` runs there, so that MLflow's store work (SQLAlchemy
    inserts, ~60 ms of CPU per network on sqlite) leaves the driver's Python thread to Tune, and several
    of them log in parallel (`--log-processes`). Its errors come back as ConnectionError (an outage, which
    `Patience` retries) or RuntimeError, with the original type and message. The child is a fresh
    interpreter (`command`) that imports only this package, talking over a socket pair. `index`: what MLflow
    holds (`Tracker.index_runs`, read once by the driver), or READ_INDEX: the process reads it itself and
    `wait_ready` returns it (the driver starts one so before Ray, to read MLflow while Ray starts and Tune
    restores); a replacement for a dead process gets None (its predecessor's logging is not in it), so it
    looks each network up."""

    command = [sys.executable, "-c", "import sys; from sweeps.mlflow_callback import _serve; "
                                     "_serve(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == '1')"]

    def __init__(self, uri: str, sweep: str, rehearsal: bool, index: dict | None = None):
        self.args = [uri, sweep, "1" if rehearsal else "0"]
        self.cpu_s = self.figure_cpu_s = 0.0
        self.restarts = 0
        self._start(index)

    def _start(self, index: dict | None = None) -> None:
        import socket
        import subprocess
        from multiprocessing.connection import Connection
        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen([*self.command, str(theirs.fileno()), *self.args],
                                     pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self._conn = Connection(ours.detach())
        self._ready = False
        try:
            self._conn.send(index)
        except OSError:                           # it died at once: wait_ready says why
            pass

    def wait_ready(self) -> dict | None:
        """Wait until it has started; the index it read (READ_INDEX; None if MLflow did not answer), else None."""
        index = None
        if not self._ready:
            try:
                kind, index = self._conn.recv()
            except (EOFError, OSError):             # it exited (unread data of ours: connection reset)
                kind, index = "failed", f"it exited with code {self.proc.wait()}"
            if kind != "ready":
                raise RuntimeError(f"the MLflow logging process could not start: {index}")
            self._ready = True
        return index

    def log_networks(self, networks: list[tuple]) -> list[tuple[bool, object]]:
        """Log [(config, result, pack_id, figures)] (a trial's networks) in one exchange: per network
        (True, logged) or (False, (is it an outage, error text)). Raises RuntimeError if the process died."""
        if self.proc.poll() is not None:          # it died (killed, out of memory): a new one
            self._conn.close()
            self.restarts += 1
            self._start(None)
        self.wait_ready()
        try:
            self._conn.send([(c, r, p, f and {k: str(v) for k, v in f.items()}) for c, r, p, f in networks])
            outs, cpu, fig = self._conn.recv()
        except (EOFError, OSError) as e:          # not an outage of MLflow: the next call starts a new process
            raise RuntimeError(f"the MLflow logging process died ({type(e).__name__})") from None
        self.cpu_s += cpu
        self.figure_cpu_s += fig
        return outs

    def log_network(self, config, result, pack_id, figures=None) -> bool:
        """One network, as `Tracker.log_network`: an outage raises ConnectionError, other errors RuntimeError."""
        (ok, value), = self.log_networks([(config, result, pack_id, figures)])
        if ok:
            return value
        transient, text = value
        raise (ConnectionError if transient else RuntimeError)(text)

    def close(self) -> None:
        try:
            self._conn.send(None)
        except OSError:
            pass
        try:
            self.proc.wait(30)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: it is stuck
            self.proc.kill()
            self.proc.wait()
        self._conn.close()


def prestart(uri: str, sweep: str, rehearsal: bool) -> None:
    """Start the first logging process of `sweep`'s MlflowLogger now, reading MLflow's runs (the index the
    logger needs at its setup): at 23,000 runs that read takes over a minute of CPU, which then overlaps
    Ray's start and Tune's restore of the sweep instead of following them. `discard_prestarted` if the
    logger never takes it."""
    discard_prestarted(sweep)
    _PRESTARTED[sweep] = LoggingProcess(uri, sweep, rehearsal, READ_INDEX)


def discard_prestarted(sweep: str) -> None:
    if (p := _PRESTARTED.pop(sweep, None)) is not None:
        p.close()


class MlflowLogger(tune.Callback):
    """Logs each network of a reported trial result to MLflow from the driver, exactly once.

    Logging (a few SQL writes per network, and the two PNGs its trial drew) runs on background threads, so that it
    never holds up Tune's event loop; `on_experiment_end` waits for it to drain. While the tracking
    server is away the thread retries (`tracking.Patience`, bounded by `retry_s`) and says so; what
    it could not log, or a killed driver did not log, is logged by the reconciliation at the end of
    this run or the next (`--resume`).
    """

    def __init__(self, tracking_uri: str, sweep: str, retry_s: float = DEFAULT_TRACKING_RETRY_S,
                 rehearsal: bool = False, threads: int = 1):
        self.tracking_uri, self.sweep, self.retry_s, self.rehearsal = tracking_uri, sweep, retry_s, rehearsal
        self.threads = max(1, int(threads))       # logging threads, each driving one LoggingProcess
        self._queue: queue.Queue | None = None
        self._threads: list[threading.Thread] = []
        self.trackers: list = []
        self._lock = threading.Lock()
        self.waiting = 0                          # networks reported but not yet through logging
        self.logged: set[str] = set()             # trial_keys logged (or found logged) by this session
        self.known: set[str] | None = None        # trial_keys FINISHED in MLflow when this session started
        self._sent: set[str] = set()              # trial_ids whose final report was queued this session
        self.cpu_s = 0.0                          # CPU time of the logging threads, in the driver
        self._final: dict[str, dict] = {}         # trial_id -> its final report, until its checkpoint arrives
        self.patience = Patience(retry_s, self._say)

    def __getstate__(self):                       # Tune pickles callbacks with the sweep (tuner.pkl)
        return {"tracking_uri": redact(self.tracking_uri), "sweep": self.sweep, "retry_s": self.retry_s,
                "rehearsal": self.rehearsal, "threads": self.threads}

    def __setstate__(self, state):
        # `--resume --tracking-uri NEW`: the callback Tune restores from the sweep's state logs to NEW
        self.__init__(TRACKING_REDIRECT.get(state["sweep"], state["tracking_uri"]), state["sweep"],
                      state.get("retry_s", DEFAULT_TRACKING_RETRY_S), state.get("rehearsal", False),
                      state.get("threads", 1))

    def _say(self, msg: str) -> None:
        print(f"[sweep {self.sweep}] {msg}; {self.waiting} networks waiting to be logged", flush=True)

    def status(self) -> str:
        """For the progress line: the logging backlog and an ongoing outage."""
        out = ""
        if self.patience.away_since is not None:
            state = "not retrying" if self.patience.exhausted else f"retry {self.patience.retries}"
            out += f", MLflow unreachable for {duration(self.patience.away_for())} ({state})"
        if self.waiting:
            out += f", {self.waiting} networks waiting to be logged"
        return out

    def setup(self, **info):
        from .tracking import Tracker
        uri = _TRACKING_URIS.get(self.sweep, self.tracking_uri)
        # what MLflow holds, read once for all (none for a new sweep): by the logging process the driver
        # started before Ray (`prestart`), else here
        first = [p for p in [_PRESTARTED.pop(self.sweep, None)] if p is not None]
        try:
            if first and first[0].args[0] != uri:     # not this sweep's store (cannot happen through full_grid)
                raise RuntimeError("another tracking URI")
            index = first[0].wait_ready() if first else None
        except RuntimeError:                      # it could not start: as without it
            first.pop().close()
        if not first:
            tracker = Tracker(uri, self.sweep, self.rehearsal)  # the experiment exists (and the store answers) first
            try:
                index = tracker.index_runs()
            except Exception:  # noqa: BLE001 - the server is away: each network is looked up (with retries)
                index = None
        self.known = None if index is None else {k for k, runs in index.items() if any(s == "FINISHED" for _, s in runs)}
        self.trackers = first + [LoggingProcess(uri, self.sweep, self.rehearsal, index)
                                 for _ in range(self.threads - len(first))]
        _LOGGERS[self.sweep] = self
        self._queue = queue.Queue()
        self._threads = [threading.Thread(target=self._work, args=(t, n), name=f"mlflow-logger-{n}", daemon=True)
                         for n, t in enumerate(self.trackers)]
        for th in self._threads:
            th.start()

    def _work(self, tracker: LoggingProcess, n: int) -> None:
        cost, last = DriverCost(), time.monotonic()
        while (item := self._queue.get()) is not None:
            t0 = time.thread_time()
            self._log_trial(tracker, *item)
            with self._lock:                  # this thread's CPU (its logging process counts its own)
                self.cpu_s += time.thread_time() - t0
            if n == 0 and self.rehearsal and time.monotonic() - last >= 30:     # the driver's cost as it goes
                last = time.monotonic()
                print(f"[sweep {self.sweep}] rehearsal {cost.line(self)}; {len(self.logged)} networks logged, "
                      f"{self.waiting} waiting", flush=True)

    def _log_trial(self, tracker: LoggingProcess, trial_id: str, packed: list[dict], result: dict, checkpoint) -> None:
        """One trial's networks: those MLflow lacks go to `tracker` in one exchange; outages are retried one
        network at a time with patience; other failures are said and left to the reconciliation."""
        from .tracking import TrackingUnavailable, trial_key
        with contextlib.ExitStack() as stack:
            try:
                networks = stack.enter_context(pack_outputs(result, checkpoint))
            except Exception as e:  # noqa: BLE001 - the reconciliation reads it again at the end
                print(f"[sweep {self.sweep}] warning: could not read the results of trial {trial_id} "
                      f"({type(e).__name__}: {e}); logged at the end", flush=True)
                with self._lock:
                    self.waiting -= len(packed)
                return
            todo = []
            for d, (r, figures) in zip(packed, networks):
                c = TrialConfig.from_dict(d)
                key = trial_key(c, self.sweep)
                if key in self.logged or (self.known is not None and key in self.known):
                    with self._lock:              # in MLflow already (a resumed sweep's re-run trial)
                        self.waiting -= 1
                        self.logged.add(key)
                else:
                    todo.append((c, key, r, figures))
            try:                                  # the trial's networks in one exchange
                outs = tracker.log_networks([(c, r, trial_id, f) for c, _, r, f in todo]) if todo else []
            except Exception as e:  # noqa: BLE001 - the process died: each network is tried again below
                outs = [(False, (True, f"{type(e).__name__}: {e}"))] * len(todo)
            for (c, key, r, figures), (ok, value) in zip(todo, outs):
                try:
                    if not ok and value[0]:       # an outage: retried one network at a time, with patience
                        self.patience.call(lambda: tracker.log_network(c, r, trial_id, figures), describe(c))
                    elif not ok:
                        raise RuntimeError(value[1])
                    self.logged.add(key)
                except TrackingUnavailable:
                    pass                          # said once by Patience; named at the end
                except Exception as e:  # noqa: BLE001 - never stop the sweep for a logging failure
                    print(f"[sweep {self.sweep}] warning: could not log {describe(c)} to MLflow "
                          f"({type(e).__name__}: {e}); retried at the end", flush=True)
                finally:
                    with self._lock:
                        self.waiting -= 1

    def _put(self, trial, result: dict, checkpoint) -> None:
        self._sent.add(trial.trial_id)
        self._queue.put((trial.trial_id, trial.config["pack"], result, checkpoint))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if is_final(result):
            with self._lock:
                self.waiting += len(trial.config["pack"])
            if "networks" in result:                # a sweep started before results moved to the checkpoint
                self._put(trial, result, None)
            else:                                   # its checkpoint comes next (on_checkpoint)
                self._final[trial.trial_id] = result

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        result = self._final.pop(trial.trial_id, None)
        if result is not None:                      # the final report's checkpoint: every network's result
            self._put(trial, result, checkpoint)

    def _unlogged(self, trials) -> list:
        """Trials that finished in an earlier session (not reported in this one) with networks that MLflow
        did not hold when this session started: their driver was stopped before it logged them."""
        from .tracking import trial_key
        if self.known is None:                      # MLflow was away at the start: the reconciliation checks
            return []
        return [t for t in trials if t.trial_id not in self._sent and is_final(t.last_result or {})
                and not all(trial_key(TrialConfig.from_dict(d), self.sweep) in self.known for d in t.config["pack"])]

    def on_experiment_end(self, trials, **info):
        if self._threads:
            if missing := self._unlogged(trials):   # logged as any other: in parallel, with the trials' figures
                n = sum(len(t.config["pack"]) for t in missing)
                print(f"[sweep {self.sweep}] {len(missing)} trials that finished before this run have networks "
                      f"missing from MLflow (their driver stopped before logging them): logging them", flush=True)
                with self._lock:
                    self.waiting += n
                for t in missing:
                    self._put(t, t.last_result, t.checkpoint)
            if self.waiting:
                print(f"[sweep {self.sweep}] training done; {self.waiting} networks still to log to MLflow"
                      + (f" (retrying while it is away, at most {self.retry_s:g} s)"
                         if self.patience.away_since is not None and not self.patience.exhausted else ""),
                      flush=True)
            for _ in self._threads:
                self._queue.put(None)
            for th in self._threads:
                th.join()
            for t in self.trackers:
                t.close()


def reconcile(tracker, sweep: str, done: list[tuple[TrialConfig, dict, str]], retry_s: float) -> tuple[int, list[str]]:
    """Log every finished network (config, result, pack id) that MLflow lacks: covers a driver killed
    between a trial's end and its logging, and logging errors during the sweep. (logged, errors)."""
    from .tracking import TrackingUnavailable, trial_key
    logger = _LOGGERS.get(sweep)
    if logger is not None and logger.known is not None:   # no need to read every run back: the logger knows
        done = [x for x in done if (k := trial_key(x[0], sweep)) not in logger.logged and k not in logger.known]
        if not done:
            return 0, []
    patience = logger.patience if logger else Patience(retry_s, lambda m: print(f"[sweep {sweep}] {m}"))
    logged, log_errors = 0, []
    try:
        have = patience.call(tracker.existing_keys, "the check of what MLflow holds")
    except TrackingUnavailable as e:           # the server is still away: nothing more can be logged now
        this_session = logger.logged if logger else set()
        return 0, [f"{describe(c)}: {e}" for c, _, _ in done if trial_key(c, sweep) not in this_session]
    for c, res, pack_id in done:
        if trial_key(c, sweep) in have:
            continue
        try:
            logged += patience.call(lambda: tracker.log_network(c, res, pack_id), describe(c))
        except Exception as e:  # noqa: BLE001
            log_errors.append(f"{describe(c)}: {type(e).__name__}: {e}")
    return logged, log_errors
