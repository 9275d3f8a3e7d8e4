"""The MLflow side of a sweep, on the driver: the Tune callback that makes each finished network one MLflow run.

    SweepSession    one sweep's driver-side state in this process (its tracking URI with the password, the
                    logging process started before Ray, the logger Tune set up), made by `full_grid.run_sweep`
                    and passed to what needs it; `SESSIONS` is how a callback that Tune restores finds it
    MlflowLogger    a Tune callback: logs every network of a trial's final report as it arrives, and at the
                    end of the run every finished network MLflow lacks (a driver killed before logging it)

The networks are logged by `logging_process.LoggingProcess`es (MLflow's store work off the driver's thread),
through one idempotent path, `tracking.Tracker.log_network` (a network whose FINISHED run exists is not logged
again; a half-logged run of a killed driver is replaced). What the logger could not log, `reconcile.reconcile`
logs after the sweep; `driver_cost.DriverCost` says what the driver spent.
"""
from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time

from ray import tune

from imbalance_core.trial import TrialConfig

from .checkpoint import is_final, pack_outputs
from .driver_cost import DriverCost
from .grids import describe
from .logging_process import READ_INDEX, LoggingProcess
from .plan import DEFAULT_TRACKING_RETRY_S, duration
from .tracking import Patience, redact


@dataclasses.dataclass(eq=False)
class SweepSession:
    """One sweep's driver-side MLflow state in this process (never pickled: it holds the password and a process).

    `moved`: `--resume --tracking-uri NEW`, so that the logger Tune restores from the sweep's state (which
    pinned the old URI) logs to `tracking_uri`. `prestarted`: the first logging process, started before Ray
    (`prestart`) until the logger takes it. `logger`: the MlflowLogger Tune set up for the sweep (its backlog
    and outages for the progress line, what it logged for the reconciliation)."""
    sweep: str
    tracking_uri: str
    rehearsal: bool = False
    moved: bool = False
    prestarted: LoggingProcess | None = None
    logger: "MlflowLogger | None" = None

    def prestart(self) -> None:
        """Start the logger's first logging process now, reading MLflow's runs (the index the logger needs at
        its setup): at 23,000 runs that read takes over a minute of CPU, which then overlaps Ray's start and
        Tune's restore of the sweep instead of following them. `discard_prestarted` if the logger never takes
        it."""
        self.discard_prestarted()
        self.prestarted = LoggingProcess(self.tracking_uri, self.sweep, self.rehearsal, READ_INDEX)

    def take_prestarted(self) -> LoggingProcess | None:
        p, self.prestarted = self.prestarted, None
        return p

    def discard_prestarted(self) -> None:
        if (p := self.take_prestarted()) is not None:
            p.close()


SESSIONS: dict[str, SweepSession] = {}   # sweep -> its session in this process: what a restored callback reads


def open_session(sweep: str, tracking_uri: str, rehearsal: bool = False) -> SweepSession:
    """A new session for `sweep` (replacing an earlier one of this process), registered in SESSIONS."""
    old = SESSIONS.pop(sweep, None)
    if old is not None:
        old.discard_prestarted()
    SESSIONS[sweep] = session = SweepSession(sweep, tracking_uri, rehearsal)
    return session


class MlflowLogger(tune.Callback):
    """Logs each network of a reported trial result to MLflow from the driver, exactly once.

    Logging (a few SQL writes per network, and the two PNGs its trial drew) runs on background threads, so that it
    never holds up Tune's event loop; `on_experiment_end` waits for it to drain. While the tracking
    server is away the thread retries (`tracking.Patience`, bounded by `retry_s`) and says so; what
    it could not log, or a killed driver did not log, is logged by the reconciliation at the end of
    this run or the next (`--resume`).
    """

    def __init__(self, tracking_uri: str, sweep: str, retry_s: float = DEFAULT_TRACKING_RETRY_S,
                 rehearsal: bool = False, threads: int = 1, session: SweepSession | None = None):
        self.tracking_uri, self.sweep, self.retry_s, self.rehearsal = tracking_uri, sweep, retry_s, rehearsal
        self.session = session                    # this process's SweepSession (not pickled)
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
        # restored by Tune (`--resume`): its session is the one run_sweep opened for the sweep in this process;
        # `--resume --tracking-uri NEW`: the callback Tune restores from the sweep's state logs to NEW
        session = SESSIONS.get(state["sweep"])
        uri = session.tracking_uri if session is not None and session.moved else state["tracking_uri"]
        self.__init__(uri, state["sweep"], state.get("retry_s", DEFAULT_TRACKING_RETRY_S),
                      state.get("rehearsal", False), state.get("threads", 1), session)

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
        session = self.session
        uri = session.tracking_uri if session is not None else self.tracking_uri
        # what MLflow holds, read once for all (none for a new sweep): by the logging process the driver
        # started before Ray (`SweepSession.prestart`), else here
        first = [p for p in [session and session.take_prestarted()] if p is not None]
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
        self.known = None if index is None else {k for k, runs in index.items()
                                                 if any(s == "FINISHED" for _, s in runs)}
        self.trackers = first + [LoggingProcess(uri, self.sweep, self.rehearsal, index)
                                 for _ in range(self.threads - len(first))]
        if session is not None:
            session.logger = self
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
            self._final[trial.trial_id] = result    # its checkpoint comes next (on_checkpoint)

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
