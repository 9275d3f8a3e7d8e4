"""The driver's MLflow logging processes: a `Tracker` in a child process, and the protocol it speaks.

    LoggingProcess   the driver's end: starts the child (a fresh interpreter running `_serve`), sends it a
                     trial's networks, gets back per network (ok, logged or (transient, error)); replaced if
                     it dies
    _serve           the child's loop, over a socket pair (multiprocessing.connection)

The first message is MLflow's index (`Tracker.index_runs`, read once by the driver), None (look each network
up) or READ_INDEX (read it there, and send it back with "ready"); then lists of networks; None ends it.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path


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
    """A `Tracker` in a child process: `log_network` runs there, so that MLflow's store work (SQLAlchemy inserts:
    benchmarks/rehearsal.py, docs/performance.md "The driver at scale") leaves the driver's Python thread to Tune,
    and several of them log in parallel (`--log-processes`). Its errors come back as ConnectionError (an outage,
    which `Patience` retries) or RuntimeError, with the original type and message. The child is a fresh interpreter
    (`command`) that imports only this package, talking over a socket pair. `index`: what MLflow holds
    (`Tracker.index_runs`, read once by the driver), or READ_INDEX: the process reads it itself and `wait_ready`
    returns it (the driver starts one so before Ray, to read MLflow while Ray starts and Tune restores); a
    replacement for a dead process gets None (its predecessor's logging is not in it), so it looks each network up."""

    command = [sys.executable, "-c", "import sys; from sweeps.logging_process import _serve; "
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
