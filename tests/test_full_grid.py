"""sweeps/full_grid.py end to end: bad input, dry run, a real Ray Tune sweep logged to MLflow, a failed
trial, --resume (re-runs only what did not finish, no duplicate MLflow runs), reconciliation.

The sweep scenario trains 6 LeNet-5 networks for 10 iterations in 2 trials: 3 on the bundled MNIST
sample and 3 on a copy of full MNIST in tmp. The copy disappears after the driver has checked it
(a wrapper around `_init_ray`, no hook in the code under test), so the MNIST trial fails; it comes
back before `--resume`, which re-runs that trial only.
"""
import json
import shutil
import socket
from pathlib import Path

import pytest

from imbalance_core import datasets as D
from imbalance_core.trial import TrialConfig
from sweeps import full_grid
from sweeps.grids import cell_of, describe
from sweeps.tracking import trial_key
from conftest import final_reports  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SWEEP = "t-sweep"
ARGS = ["--preset", "quick", "--datasets", "mnist-sample", "mnist", "--imbalance", "step", "--rho", "10",
        "--methods", "baseline", "ros", "two-phase-ros", "--repetitions", "1", "--iterations", "10",
        "--pack-size", "3", "--max-failures", "0", "--name", SWEEP]


def _client(uri):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def _runs(uri, name=SWEEP):
    c = _client(uri)
    exp = c.get_experiment_by_name(name)
    return c, exp, c.search_runs([exp.experiment_id], max_results=1000)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- bad input: exit 2, nothing starts

@pytest.mark.parametrize("extra, named", [
    (["--preset", "mnist-full"], "'mnist-full'"),
    (["--datasets", "imagenet1k"], "'imagenet1k'"),
    (["--methods", "smote"], "'smote'"),
    (["--rho", "0.5"], "rho=0.5"),
    (["--mu", "1.5"], "mu=1.5"),
    (["--datasets", "mnist", "--data-dir", "{tmp}/empty"], "{tmp}/empty"),
    (["--tracking-uri", "http://127.0.0.1:{port}"], "http://127.0.0.1:{port}"),
    (["--resume", "--name", "nosuch"], "{tmp}/ray/nosuch"),
    (["--cpus-per-trial", "512"], "--cpus-per-trial 512"),
    (["--pack-size", "0"], "--pack-size 0"),
])
def test_bad_input_exits_2_naming_the_value(tmp_path, capsys, no_ray, extra, named):
    (tmp_path / "empty").mkdir()
    port = _free_port()
    fill = {"tmp": tmp_path, "port": port}
    argv = ["--storage-path", str(tmp_path / "ray"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
            "--iterations", "5"] + [x.format(**fill) for x in extra]
    assert full_grid.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named.format(**fill) in err, err
    assert not (tmp_path / "ray").exists()


def test_malformed_option_exits_2(capsys, no_ray):
    assert full_grid.main(["--pack-size", "many"]) == 2
    assert "'many' is not an integer or 'auto'" in capsys.readouterr().err


def test_dry_run_prints_sizes_and_estimate_without_starting_anything(tmp_path, capsys, no_ray):
    db = tmp_path / "m.db"
    argv = ["--dry-run", "--storage-path", str(tmp_path / "ray"), "--tracking-uri", f"sqlite:///{db}"]
    assert full_grid.main(argv) == 0
    out = capsys.readouterr().out
    assert "30 networks in 6 trials (packs of <= 5 (auto: CPU pack))" in out and "3 cells" in out
    assert "training images: 576,000" in out                      # 6 packs x 5 networks x 300 x 64
    assert "assuming lenet5 3,000 img/s per CPU" in out
    assert "3m12s of trial time" in out                           # 576,000 / 3,000 img/s
    assert not db.exists() and not (tmp_path / "ray").exists()


# --------------------------------------------------------------------------- a real sweep

@pytest.fixture(scope="module")
def sweep(ray_local, tmp_path_factory):
    """Run 1: the MNIST data vanishes after the driver checked it -> that trial fails (exit 1).
    Run 2: the data is back, --resume -> only the failed trial runs (exit 0)."""
    tmp = tmp_path_factory.mktemp("sweep")
    data = tmp / "data"
    shutil.copytree(Path(__file__).resolve().parents[2] / "shared" / "data" / "MNIST", data / "MNIST")
    uri = f"sqlite:///{tmp}/mlflow.db"
    argv = ARGS + ["--data-dir", str(data), "--storage-path", str(tmp / "ray"), "--tracking-uri", uri]
    sweep_dir = tmp / "ray" / SWEEP
    state = {"uri": uri, "argv": argv, "sweep_dir": sweep_dir, "data": data}

    mp = pytest.MonkeyPatch()
    real_init = full_grid._init_ray

    def init_after_data_vanished(a):
        (data / "MNIST").rename(data / "MNIST.away")
        return real_init(a)

    mp.setattr(full_grid, "_init_ray", init_after_data_vanished)
    out1 = _run(argv, state, "rc1", "out1")
    mp.undo()
    state["runs1"] = sorted((r.data.tags["trial_key"], r.info.run_id) for r in _runs(uri)[2])
    state["lines1"] = final_reports(sweep_dir)

    (data / "MNIST.away").rename(data / "MNIST")
    _run(argv + ["--resume"], state, "rc2", "out2")
    state["lines2"] = final_reports(sweep_dir)
    return state


def _run(argv, state, rc_key, out_key):
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        state[rc_key] = full_grid.main(argv)
    state[out_key] = buf.getvalue()
    print(state[out_key])
    return state[out_key]


def _configs(data):
    return [TrialConfig(dataset=ds, data_dir=str(data), imbalance="step", rho=10.0, mu=0.5, method=m, seed=0,
                        iterations=10)
            for ds in ("mnist-sample", "mnist") for m in ("baseline", "ros", "two-phase-ros")]


def test_failed_trial_is_reported_and_the_others_finish(sweep):
    out = sweep["out1"]
    assert sweep["rc1"] == 1, out
    assert "3 networks finished, 3 failed (1 trials)" in out
    assert "FAILED trial:" in out and "DatasetError" in out and "MNIST" in out
    for m in ("baseline", "ros", "two-phase-ros"):
        assert f"mnist-step-rho10-mu0.5-{m}-s0  " in out                # each failed network with its config
    assert "re-run the failed trials with: --resume --name t-sweep" in out
    # the finished trial's networks are in MLflow, the failed ones are not
    want = {trial_key(c, SWEEP) for c in _configs(sweep["data"]) if c.dataset == "mnist-sample"}
    assert {k for k, _ in sweep["runs1"]} == want and len(sweep["runs1"]) == 3
    assert "mnist-sample/step/rho10/mu0.5  baseline" in out                # results table
    assert "networks done" in out and "1 failed" in out                    # progress lines
    # the driver logged each finished network as its trial reported: the end-of-run reconciliation had nothing
    # left to log
    assert "reconciliation: logged 0 finished networks" in out


def test_resume_reruns_only_the_failed_trial_and_logs_every_network_once(sweep):
    assert sweep["rc2"] == 0, sweep["out2"]
    lines1, lines2 = sweep["lines1"], sweep["lines2"]
    sample = [t for t in lines2 if "mnist-sample" in t]
    assert len(lines2) == 2 and len(sample) == 1
    assert lines1.get(sample[0]) == 1 and sum(lines1.values()) == 1       # run 1: only the sample trial reported
    assert lines2 == {t: 1 for t in lines2}                               # run 2: the MNIST trial reported once,
                                                                          # the sample trial did not train again
    c, exp, runs = _runs(sweep["uri"])
    keys = [r.data.tags["trial_key"] for r in runs]
    assert sorted(keys) == sorted(trial_key(x, SWEEP) for x in _configs(sweep["data"]))   # each network once
    before = dict(sweep["runs1"])
    assert all(before[r.data.tags["trial_key"]] == r.info.run_id for r in runs if r.data.tags["trial_key"] in before)
    assert "6 networks finished, 0 failed" in sweep["out2"]
    assert "reconciliation: logged 0 finished networks" in sweep["out2"]  # the re-run trial logged as it reported
    out = sweep["out2"]
    assert f"#/experiments/{exp.experiment_id}/runs" in out and "mlflow ui --backend-store-uri" in out


def test_every_network_follows_the_mlflow_contract(sweep, tmp_path):
    c, exp, runs = _runs(sweep["uri"])
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    by_key = {trial_key(x, SWEEP): x for x in _configs(sweep["data"])}
    assert len(runs) == 6
    for r in runs:
        cfg = by_key[r.data.tags["trial_key"]]
        assert r.info.status == "FINISHED" and r.info.run_name == describe(cfg)
        t = r.data.tags
        assert (t["sweep"], t["cell"], t["method"]) == (SWEEP, cell_of(cfg), cfg.method) and t["pack_id"]
        p = r.data.params
        fields = {k: str(v) for k, v in cfg.identity().items() if k != "batch_size"}
        assert {k: p[k] for k in fields} == fields and "data_dir" not in p      # no folder of this machine
        assert p["data_digest"] == D.digest(D.load_dataset(cfg.dataset, cfg.data_dir))
        assert p["batch_size"] == "64" and p["base_lr"] == "0.01" and p["model"] == "lenet5" and p["code_version"]
        m = r.data.metrics
        for k in ("auc", "accuracy", "accuracy_thresholded", "train_seconds", "images_per_second", "final_loss",
                  "train_examples", "epoch_examples"):
            assert k in m
        assert {f"recall_{i}" for i in range(10)} | {f"recall_thresholded_{i}" for i in range(10)} <= set(m)
        assert 0 <= m["accuracy"] <= 100 and 0 <= m["auc"] <= 100
        assert m["train_examples"] == (5 * 400 + 5 * 40 if cfg.dataset == "mnist-sample" else 5 * 5000 + 5 * 500)
        assert {a.path for a in c.list_artifacts(r.info.run_id)} == {"result.json", "confusion_matrix.png",
                                                                     "per_class_recall.png"}
        local = Path(c.download_artifacts(r.info.run_id, "", str(tmp_path / r.info.run_id)))
        for png in ("confusion_matrix.png", "per_class_recall.png"):
            blob = (local / png).read_bytes()
            assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 5000
        doc = json.loads((local / "result.json").read_text())
        assert doc["config"] == cfg.identity() and doc["trial_key"] == t["trial_key"]
        assert doc["data_digest"] == p["data_digest"]
        assert doc["auc"] == pytest.approx(m["auc"]) and len(doc["confusion_matrix"]) == 10
        if cfg.method == "two-phase-ros":
            assert doc["finetune_iterations"] == 10


def test_resume_of_a_finished_sweep_logs_what_mlflow_lacks_without_training(sweep, capsys):
    c, exp, runs = _runs(sweep["uri"])
    gone = runs[0]
    c.delete_run(gone.info.run_id)               # as if the driver died between a trial's end and its logging
    assert full_grid.main(sweep["argv"] + ["--resume"]) == 0
    out = capsys.readouterr().out
    # the restored MLflow callback logs it, as it logs any network (its logging process, the trial's figures)
    assert "1 trials that finished before this run have networks missing from MLflow" in out
    assert "reconciliation: logged 0 finished networks that were missing from MLflow" in out
    assert final_reports(sweep["sweep_dir"]) == sweep["lines2"]           # nothing trained again
    _, _, after = _runs(sweep["uri"])
    assert len(after) == 6 and len({r.data.tags["trial_key"] for r in after}) == 6
    assert gone.data.tags["trial_key"] in {r.data.tags["trial_key"] for r in after}


def test_starting_an_existing_sweep_again_needs_resume(sweep, capsys, no_ray):
    assert full_grid.main(sweep["argv"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and str(sweep["sweep_dir"]) in err and "--resume" in err


# --------------------------------------------------------------------------- a driver killed mid-sweep

HANG = """
import sys, time
sys.path.insert(0, sys.argv[1])
from sweeps import full_grid
from sweeps.logging_process import LoggingProcess
# the driver's logging process runs LOGGER (below) instead of plain _serve: same serving, with the hang
LoggingProcess.command = [sys.executable, "-c", open(sys.argv[2] + ".logger.py").read(), sys.argv[2]]
sys.exit(full_grid.main(sys.argv[3:]))
"""

LOGGER = """
import sys, time
from pathlib import Path
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from sweeps.logging_process import _serve
mark, calls, real = sys.argv[1], [], LocalArtifactRepository.log_artifacts


def log_artifacts(self, *a, **k):  # the 2nd network's artifacts: note its run, then hang until killed
    calls.append(Path(self.artifact_uri).parent.name)         # .../<experiment>/<run id>/artifacts
    if len(calls) == 2:
        open(mark, "w").write(calls[-1])
        time.sleep(3600)
    return real(self, *a, **k)


LocalArtifactRepository.log_artifacts = log_artifacts
_serve(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "1")
"""


def _processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process, from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                out.append((int(d.name), ppid, (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
            except (OSError, ValueError, IndexError):
                pass
    return out


def test_driver_killed_mid_sweep_then_resumed_logs_each_network_once(ray_local, tmp_path, capsys):
    """A driver process (joined to the running Ray) and its logging process are killed with SIGKILL while
    they log a trial's networks:
    one network FINISHED in MLflow, the next half-logged (run created, params and metrics, no artifacts),
    the third not at all, the other trial pending or running. `--resume` (here, in-process) must end with
    each of the 6 networks exactly once, complete, and the half-logged run gone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import ray
    name, uri = "t-killed", f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["--preset", "quick", "--datasets", "mnist-sample", "--imbalance", "step", "--rho", "10",
            "--methods", "baseline", "ros", "two-phase-ros", "--repetitions", "2", "--iterations", "10",
            "--pack-size", "3", "--max-failures", "0", "--max-concurrent", "1", "--name", name,
            "--storage-path", str(tmp_path / "ray"), "--tracking-uri", uri]
    script, mark = tmp_path / "hang.py", tmp_path / "half-logged-run"
    script.write_text(HANG)
    Path(str(mark) + ".logger.py").write_text(LOGGER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / "driver.log", "wb")
    driver = subprocess.Popen([sys.executable, str(script), str(ROOT), str(mark), *argv,
                               "--address", ray.get_runtime_context().gcs_address],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while not mark.exists():
            assert driver.poll() is None, "driver exited early:\n" + (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() - t0 < 600, "no trial reported in 600 s:\n" + (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(0.5)
    finally:
        logger = [pid for pid, ppid, cmd in _processes() if ppid == driver.pid and "_serve" in cmd]
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
        for pid in logger:                        # the driver's logging process, hung in the 2nd network
            os.kill(pid, signal.SIGKILL)
        log.close()
    half = mark.read_text()

    c = _client(uri)
    exp = c.get_experiment_by_name(name)
    before = c.search_runs([exp.experiment_id], max_results=100)
    status = {r.info.run_id: r.info.status for r in before}
    assert status.get(half) == "RUNNING" and sorted(status.values()) == ["FINISHED", "RUNNING"], status
    assert "auc" in c.get_run(half).data.metrics and c.list_artifacts(half) == []         # really half-logged
    finished = next(r for r in before if r.info.status == "FINISHED")

    assert full_grid.main(argv + ["--resume"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "6 networks finished, 0 failed" in out
    runs = c.search_runs([exp.experiment_id], max_results=100)
    want = sorted(trial_key(TrialConfig(dataset="mnist-sample", imbalance="step", rho=10.0, mu=0.5, method=m, seed=s,
                                        iterations=10), name)
                  for m in ("baseline", "ros", "two-phase-ros") for s in (0, 1))
    assert sorted(r.data.tags["trial_key"] for r in runs) == want                          # each network once
    for r in runs:                                                                         # ... and complete
        assert r.info.status == "FINISHED", r.info.run_name
        assert {"auc", "accuracy", "accuracy_thresholded", "recall_9"} <= set(r.data.metrics), r.info.run_name
        assert r.data.params["method"] == r.data.tags["method"] and r.data.params["code_version"]
        assert {a.path for a in c.list_artifacts(r.info.run_id)} == {"result.json", "confusion_matrix.png",
                                                                     "per_class_recall.png"}, r.info.run_name
    ids = {r.info.run_id for r in runs}
    assert half not in ids and c.get_run(half).info.lifecycle_stage == "deleted"         # the half-logged run is gone
    assert finished.info.run_id in ids                                                     # the complete one was kept


def test_progress_counts_the_finished_networks_of_running_packs():
    """A long pack (9 paper-length networks: about an hour on a CPU) shows its progress before it ends."""
    from types import SimpleNamespace

    from sweeps.full_grid import Progress

    def trial(i, status, pack, done=None):
        return SimpleNamespace(trial_id=f"t{i}", status=status, config={"pack": [{}] * pack},
                               last_result={} if done is None else {"networks_done": done})
    p = Progress("s", n_trials=4, n_networks=30, every_s=0)
    p.t0 -= 60
    trials = [trial(0, "TERMINATED", 9, 9), trial(1, "RUNNING", 9, 4), trial(2, "RUNNING", 9), trial(3, "PENDING", 3)]
    p.base_networks = 0
    line = p._line(trials)
    assert "13/30 networks done (1/4 trials), 2 running, 0 failed" in line, line
    assert "left" in line and "unknown" not in line
    trials[1] = trial(1, "ERROR", 9, 4)            # a failed pack's networks are not counted as done
    assert "9/30 networks done (1/4 trials), 1 running, 1 failed" in p._line(trials)


def test_packs_searcher_suggests_each_pack_once_in_order_and_resumes_where_it_stopped(tmp_path):
    """Tune's search algorithm of a sweep (`full_grid.Packs`, not grid_search: see its docstring): one trial
    per pack, in plan order, then FINISHED; its saved state (Tune saves it with the experiment) continues."""
    from ray.tune.search import Searcher

    from sweeps.full_grid import Packs
    packs = [[{"method": m, "seed": s}] for s in range(3) for m in ("baseline", "ros")]
    first = Packs(packs)
    assert [first.suggest(f"t{i}") for i in range(2)] == [{"pack": p} for p in packs[:2]]
    first.save(str(tmp_path / "searcher.json"))
    again = Packs()
    again.restore(str(tmp_path / "searcher.json"))
    assert [again.suggest(f"t{i}")["pack"] for i in range(2, 6)] == packs[2:]
    assert again.suggest("t6") == Searcher.FINISHED
    # the sweep's trial options go with every pack and survive a resume
    opts = {"allow_tf32": True, "checkpoint_every_s": 90.0}
    told = Packs(packs, opts)
    assert told.suggest("t0") == {"pack": packs[0], **opts}
    told.save(str(tmp_path / "told.json"))
    again = Packs()
    again.restore(str(tmp_path / "told.json"))
    assert again.suggest("t1") == {"pack": packs[1], **opts}
    # a sweep saved before options: its TF32 setting kept, checkpoints between phases only (as it ran)
    (tmp_path / "old.json").write_text(json.dumps({"packs": packs, "next": 1, "allow_tf32": True}))
    old = Packs()
    old.restore(str(tmp_path / "old.json"))
    assert old.suggest("t1") == {"pack": packs[1], "allow_tf32": True, "checkpoint_every_s": None}


def test_checkpoint_every_min_is_told_to_every_trial_and_checked():
    from sweeps.plan import UsageError, parse_options, _check_resources
    assert parse_options([]).trial_options == {"allow_tf32": False, "checkpoint_every_s": 600.0}
    assert parse_options(["--checkpoint-every-min", "2.5", "--allow-tf32"]).trial_options == \
        {"allow_tf32": True, "checkpoint_every_s": 150.0}
    assert parse_options(["--checkpoint-every-min", "0"]).trial_options["checkpoint_every_s"] is None
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(UsageError, match=f"--checkpoint-every-min {bad} is not allowed: need minutes >= 0"):
            _check_resources(parse_options(["--checkpoint-every-min", bad]))


def test_a_sweep_keeps_as_many_trials_pending_as_tunes_grid_search(monkeypatch):
    """Tune keeps 1 trial pending for a custom search algorithm (so `Packs` would start trials one at a time and
    show an autoscaler one trial's demand); the sweep's environment gives it the 200 of Tune's grid search."""
    from ray.tune.execution.tune_controller import _get_max_pending_trials
    from ray.tune.search import SearchGenerator

    from sweeps.full_grid import DRIVER_ENV, Packs
    generator = SearchGenerator(Packs([[{"method": "baseline"}]]))
    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG", raising=False)
    assert _get_max_pending_trials(generator) == 1
    for k, v in DRIVER_ENV.items():
        monkeypatch.setenv(k, v)
    assert _get_max_pending_trials(generator) == 200
