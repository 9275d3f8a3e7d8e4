"""The driver's MLflow logging process (`sweeps.logging_process.LoggingProcess`): a network is logged there
once, its errors come back named, and a logging process that dies is replaced by the next call."""
from __future__ import annotations

import dataclasses

import pytest

from imbalance_core.trial import TrialConfig
from sweeps.logging_process import LoggingProcess
from sweeps.rehearsal import rehearse_trials
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


def check_the_index_is_what_search_runs_returns(uri: str, monkeypatch) -> None:
    """`Tracker.index_runs` reads (trial_key, run id, status) from the store's tables in one query: it must equal
    what MLflow's search_runs returns (the path of a tracking server) for FINISHED, FAILED and RUNNING runs, and
    leave out a deleted run, a run without a trial_key and a run of another sweep."""
    from mlflow.tracking import MlflowClient
    sweep = f"index-{abs(hash(uri)) % 10_000}"
    tracker, other = Tracker(uri, sweep), Tracker(uri, sweep + "-other")
    configs = [TrialConfig(dataset="mnist-sample", imbalance="step", rho=10, mu=0.5, method="baseline", seed=s,
                           iterations=2, device="cpu") for s in range(4)]
    results = [r.to_dict() for r in rehearse_trials(configs)]
    keys = [trial_key(c, sweep) for c in configs]
    for c, r in zip(configs[:2], results):
        tracker.log_network(c, r, "p0")
    other.log_network(configs[2], results[2], "p1")
    client = MlflowClient(tracking_uri=uri)
    runs = {r.data.tags["trial_key"]: r.info.run_id for r in client.search_runs([tracker.experiment_id])}
    client.delete_run(runs[keys[1]])
    running = client.create_run(tracker.experiment_id, tags={"trial_key": keys[2]}).info.run_id
    failed = client.create_run(tracker.experiment_id, tags={"trial_key": keys[3]}).info.run_id
    client.set_terminated(failed, "FAILED")
    client.create_run(tracker.experiment_id, tags={"note": "no trial key"})
    want = {keys[0]: [(runs[keys[0]], "FINISHED")], keys[2]: [(running, "RUNNING")], keys[3]: [(failed, "FAILED")]}
    assert tracker.index_runs() == want
    assert tracker.existing_keys() == {keys[0]}
    monkeypatch.setattr("sweeps.compat.sql_store", lambda client: None)
    assert tracker.index_runs() == want                  # through search_runs, as from a tracking server
    assert tracker.existing_keys() == {keys[0]}


def test_the_index_read_from_the_stores_tables_is_what_search_runs_returns(tmp_path, monkeypatch):
    check_the_index_is_what_search_runs_returns(f"sqlite:///{tmp_path}/mlflow.db", monkeypatch)


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


def test_a_trials_networks_go_in_one_exchange_and_an_outage_leaves_the_rest_untried(tmp_path, monkeypatch):
    """`log_networks`: a trial's networks in one exchange, each logged once, with the index the driver sent;
    after an outage error the rest of the list is not tried (the driver retries them one at a time)."""
    from mlflow.tracking import MlflowClient
    uri, sweep = f"sqlite:///{tmp_path}/mlflow.db", "lp-many"
    tracker = Tracker(uri, sweep)
    configs = [TrialConfig(dataset="mnist-sample", imbalance="step", rho=10, mu=0.5, method=m, seed=0,
                           iterations=2, device="cpu") for m in ("baseline", "ros", "rus")]
    results = [r.to_dict() for r in rehearse_trials(configs)]
    assert tracker.index_runs() == {}
    lp = LoggingProcess(uri, sweep, False, tracker.index_runs())
    try:
        items = [(c, r, "p0", None) for c, r in zip(configs, results)]
        assert lp.log_networks(items[:2]) == [(True, True), (True, True)]
        assert lp.log_networks(items) == [(True, False), (True, False), (True, True)]   # FINISHED: not again
    finally:
        lp.close()
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(sweep).experiment_id])
    assert sorted(r.data.tags["trial_key"] for r in runs) == sorted(trial_key(c, sweep) for c in configs)



def test_after_an_outage_error_the_rest_of_a_trials_networks_come_back_untried(monkeypatch):
    """`_serve` (the logging process's loop), run here on a thread with a stand-in Tracker whose store goes
    away at the 2nd network: the 1st is logged, the 2nd comes back as an outage, the 3rd untried (an outage
    too, so the driver retries it with patience); a later list is tried again from its first network."""
    import socket
    import threading
    from multiprocessing.connection import Connection

    from sweeps import logging_process, tracking

    class Tracker:
        figure_cpu_s, calls = 0.0, []

        def __init__(self, *a):
            pass

        def use_index(self, index):
            assert index == {"k": []}

        def log_network(self, config, result, pack_id, figures):
            Tracker.calls.append(config)
            if config == "b":
                raise ConnectionError("Connection refused")
            return True

    monkeypatch.setattr(tracking, "Tracker", Tracker)
    ours, theirs = socket.socketpair()
    serving = threading.Thread(target=logging_process._serve, args=(theirs.detach(), "uri", "s", False))
    serving.start()
    conn = Connection(ours.detach())
    conn.send({"k": []})
    assert conn.recv() == ("ready", None)
    conn.send([(n, {}, "p0", None) for n in ("a", "b", "c")])
    outs, cpu, _ = conn.recv()
    assert outs[0] == (True, True) and outs[1] == (False, (True, "ConnectionError: Connection refused"))
    assert outs[2] == (False, (True, "not tried: ConnectionError: Connection refused"))
    conn.send([(n, {}, "p1", None) for n in ("c",)])
    assert conn.recv()[0] == [(True, True)]
    conn.send(None)
    serving.join(10)
    assert not serving.is_alive() and Tracker.calls == ["a", "b", "c"]


def test_a_prestarted_logging_process_reads_mlflows_runs_for_the_logger(tmp_path, monkeypatch):
    """`SweepSession.prestart` (full_grid calls it before starting Ray): the process reads MLflow's index itself and the
    MlflowLogger's setup takes it, with no read of MLflow on the driver; the logger then skips a network
    MLflow holds and logs the others once, through that process and a second one given the same index."""
    from mlflow.tracking import MlflowClient

    from sweeps import mlflow_callback
    uri, sweep = f"sqlite:///{tmp_path}/mlflow.db", "lp-pre"
    tracker = Tracker(uri, sweep)
    configs = [TrialConfig(dataset="mnist-sample", imbalance="step", rho=10, mu=0.5, method=m, seed=0,
                           iterations=2, device="cpu") for m in ("baseline", "ros", "rus")]
    results = [r.to_dict() for r in rehearse_trials(configs)]
    tracker.log_network(configs[0], results[0], "p0")
    index = tracker.index_runs()
    assert list(index) == [trial_key(configs[0], sweep)]

    session = mlflow_callback.open_session(sweep, uri, False)
    session.prestart()
    pre = session.prestarted
    monkeypatch.setattr(Tracker, "index_runs", lambda self: pytest.fail("the driver read MLflow's runs"))
    logger = mlflow_callback.MlflowLogger(uri, sweep, threads=2, session=session)
    logger.setup()
    try:
        assert session.prestarted is None and logger.trackers[0] is pre and session.logger is logger
        assert logger.known == {trial_key(configs[0], sweep)}
        outs = [t.log_networks([(c, r, "p1", None)]) for t, c, r in zip(logger.trackers * 2, configs, results)]
        assert outs == [[(True, False)], [(True, True)], [(True, True)]]   # the 1st is in MLflow: not again
    finally:
        logger.on_experiment_end(trials=[])            # stops its threads, closes both processes
        mlflow_callback.SESSIONS.pop(sweep, None)
    assert [t.proc.returncode for t in logger.trackers] == [0, 0]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(sweep).experiment_id])
    assert sorted(r.data.tags["trial_key"] for r in runs) == sorted(trial_key(c, sweep) for c in configs)


def test_a_dataset_created_by_another_logging_process_meanwhile_is_linked_on_a_second_try(tmp_path, monkeypatch):
    """Two logging processes logging networks of one subset at the same moment: MLflow checks that the subset's
    dataset is missing, the other process inserts it, and this insert fails on the unique key (seen with two
    processes on sqlite). The network is still logged once, linked to the dataset that exists."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    uri, sweep = f"sqlite:///{tmp_path}/mlflow.db", "lp-race"
    tracker = Tracker(uri, sweep)
    configs = [TrialConfig(dataset="mnist-sample", imbalance="step", rho=10, mu=0.5, method=m, seed=0,
                           iterations=2, device="cpu") for m in ("baseline", "ros")]
    results = [r.to_dict() for r in rehearse_trials(configs)]
    assert results[0]["subset_digest"] == results[1]["subset_digest"]          # one subset, one dataset
    other = Tracker(uri, sweep)                                                 # "the other process"
    real = MlflowClient.log_inputs
    calls = []

    def racing(self, run_id, datasets=None, models=None):
        calls.append(run_id)
        if len(calls) == 1:                        # the other process logs its network of the subset first
            other.log_network(configs[1], results[1], "p1")
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                                  "datasets.name, datasets.digest\n[SQL: INSERT INTO datasets (dataset_uuid, ...)]")
        return real(self, run_id, datasets=datasets, models=models)
    monkeypatch.setattr(MlflowClient, "log_inputs", racing)
    assert tracker.log_network(configs[0], results[0], "p0") is True
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([tracker.experiment_id])
    assert sorted(r.data.tags["trial_key"] for r in runs) == sorted(trial_key(c, sweep) for c in configs)
    digests = {r.data.tags["trial_key"]: [d.dataset.digest for d in r.inputs.dataset_inputs] for r in runs}
    assert all(v == [results[0]["subset_digest"][:len(v[0])]] for v in digests.values()), digests
    assert all(r.info.status == "FINISHED" for r in runs)
    monkeypatch.setattr(MlflowClient, "log_inputs", lambda *a, **k: (_ for _ in ()).throw(
        MlflowException("INVALID_PARAMETER_VALUE: something else")))
    with pytest.raises(MlflowException, match="something else"):            # any other error still raises
        tracker.log_network(dataclasses.replace(configs[0], seed=1), results[0], "p2")
