"""The driver's own cost during a sweep (a rehearsal prints it; benchmarks/rehearsal.py reads the line)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .mlflow_callback import MlflowLogger


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
