"""The driver's MLflow logging process (`sweeps.mlflow_callback.LoggingProcess`): a network is logged there
once, its errors come back named, and a logging process that dies is replaced by the next call."""
from __future__ import annotations

import pytest

from imbalance_core.trial import TrialConfig
from sweeps.mlflow_callback import LoggingProcess
from sweeps.trainable import rehearse_trials
from sweeps.tracking import Tracker, trial_key


def test_logging_process_logs_once_names_errors_and_is_replaced_when_it_dies(tmp_path):
    from mlflow.tracking import MlflowClient
    uri, sweep = f"sqlite:///{tmp_path}/mlflow.db", "lp"
    Tracker(uri, sweep)                                     # the experiment exists, as MlflowLogger.setup makes it
    configs = [TrialConfig(dataset="mnist-sample", imbalance="step", rho=10, mu=0.5, method="baseline", seed=s,
                           iterations=2, device="cpu") for s in range(3)]
    results = [r.to_dict() for r in rehearse_trials(configs)]
    lp = LoggingProcess(uri, sweep, False)
    try:
        assert lp.log_network(configs[0], results[0], "p0") is True
        assert lp.log_network(configs[0], results[0], "p0") is False       # FINISHED already: not again
        assert lp.cpu_s > 0 and lp.figure_cpu_s > 0          # no figures from a trial: drawn there, counted
        lp.proc.kill()
        lp.proc.wait()
        assert lp.log_network(configs[1], results[1], "p0") is True and lp.restarts == 1
        with pytest.raises(RuntimeError, match="KeyError: 'model'"):       # a broken result, named
            lp.log_network(configs[2], {k: v for k, v in results[2].items() if k != "model"}, "p0")
    finally:
        lp.close()
    assert lp.proc.returncode == 0
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(sweep).experiment_id])
    assert sorted((r.data.tags["trial_key"], r.info.status) for r in runs) == sorted(
        (trial_key(c, sweep), "FINISHED") for c in configs[:2])


def test_a_logging_process_that_cannot_start_says_why(tmp_path):
    lp = LoggingProcess(f"sqlite:///{tmp_path}/no-such-dir/x/mlflow.db", "lp", False)
    lp.command = [lp.command[0], "-c", "raise SystemExit(3)"]
    lp.proc.kill()
    lp.proc.wait()
    lp._conn.close()
    lp._start()                                            # the broken command: it exits before it is ready
    with pytest.raises(RuntimeError, match="could not start: it exited with code 3"):
        lp.log_network(None, {}, "p0")
    lp.close()
