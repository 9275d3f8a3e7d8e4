"""After a sweep, on the driver: every finished network that MLflow lacks is logged (`reconcile`).

It covers a driver killed between a trial's end and its logging, and what the `MlflowLogger` could not log
(MLflow away past its bound, errors). It goes through the same idempotent path, `tracking.Tracker.log_network`.
"""
from __future__ import annotations

from imbalance_core.trial import TrialConfig

from .grids import describe
from .mlflow_callback import MlflowLogger
from .tracking import Patience


def reconcile(tracker, sweep: str, done: list[tuple[TrialConfig, dict, str]], retry_s: float,
              logger: MlflowLogger | None = None) -> tuple[int, list[str]]:
    """Log every finished network (config, result, pack id) that MLflow lacks: covers a driver killed
    between a trial's end and its logging, and logging errors during the sweep. `logger`: the sweep's
    MlflowLogger of this session, if it ran (what it logged and found is not read back). (logged, errors)."""
    from .tracking import TrackingUnavailable, trial_key
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
