"""Interruptions on a multi-node cluster (`ray.cluster_utils.Cluster`, a real MLflow tracking server):

a) the node training a pack is killed mid-pack (a spot reclaim): the retried trial, on another node,
   resumes from the pack's last finished network; counted from every progress report Tune recorded,
   no finished network is trained twice, and MLflow holds each network once;
b) the head moved (its MLflow server has a new address): `--resume` alone stops with a clear error
   naming the way out, `--resume --tracking-uri NEW` finishes the sweep against the new server;
c) `python -m sweeps.cluster gpu-smoke` on a GPU node without CUDA fails loudly (exit 1, the cause).

The tracking URI of a) carries the '\\r' that a head IP captured through `ray exec` ends in.
Measured on 2 cores shared with other test runs: about 6.5 min in all (a) 4 min, b) 2.5 min: two
MLflow server starts, three short sweeps; c) 10 s); alone on the machine it should be well under that.
"""
from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from sweeps import cluster as C
import cluster_harness as H

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
METHODS = ["baseline", "ros", "rus", "two-phase-ros", "two-phase-rus"]


@pytest.fixture(scope="module")
def cluster(ray_env):
    """A head without CPUs (runs no trial) and one worker node of 1 CPU; tests add and kill workers."""
    c = H.multinode_cluster(os.path.join(ray_env, "ray"), system_config=H.FAST_HEALTH_CHECK)
    try:
        yield c
    finally:
        H.stop_multinode(c)


class MlflowServer:
    """`mlflow server` on 127.0.0.1:<port> over a store folder (the EFS folder of a real cluster)."""

    def __init__(self, store: Path):
        self.store, self.port = store, H.free_ports(1)[0]
        self.uri = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [str(exe), "server", "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
             "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=open(store / f"server-{self.port}.log", "w"), start_new_session=True)
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert self.proc.poll() is None, (store / f"server-{self.port}.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "MLflow server did not come up in 180 s"
            time.sleep(0.5)

    def stop(self):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(15)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    s = tmp_path_factory.mktemp("efs")
    (s / "artifacts").mkdir()
    return s


@pytest.fixture(scope="module")
def old_head_server(store):
    server = MlflowServer(store)
    yield server
    server.stop()


def run(argv: list[str]) -> tuple[int, str, str]:
    from sweeps import full_grid
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = full_grid.main(argv)
    print(out.getvalue(), err.getvalue())
    return rc, out.getvalue(), err.getvalue()


def runs_by_key(uri: str, sweep: str) -> collections.Counter:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(sweep)
    assert exp is not None, f"no experiment {sweep!r} at {uri}"
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=10000)
    return collections.Counter(r.data.tags["trial_key"] for r in runs)


def final_networks(sweep_dir: Path) -> list[dict]:
    """The network results of the (one) pack's final report, from the checkpoint it came with."""
    from ray import tune

    from sweeps.checkpoint import pack_results
    for path in sorted(sweep_dir.glob("*/result.json")):
        for row in (json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()):
            if row.get("final"):
                return pack_results(row, tune.Checkpoint.from_directory(path.parent / row["checkpoint_dir_name"]))
    raise AssertionError(f"no final report in {sweep_dir}")


# --------------------------------------------------------------------------- a) a node killed mid-pack

def driver_rows(ray_dir: str, sweep: str) -> list[dict]:
    """The results the Tune driver has processed so far, from its own staging copy of result.json (under
    the Ray session folder; the copy under --storage-path is only synced now and then, so it lags by
    several networks). A checkpoint whose result is here is the one a retried trial restores."""
    rows = []
    found = Path(ray_dir).glob(f"session_*/artifacts/*/{sweep}/driver_artifacts/*/result.json")
    for path in sorted({p.resolve() for p in found}):     # session_latest links to the session folder
        rows += [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip().endswith("}")]
    return rows


def test_pack_resumes_from_its_last_finished_network_after_its_node_is_killed(cluster, store, old_head_server,
                                                                               tmp_path):
    from ray import tune
    sweep_dir = tmp_path / "ray" / "killpack"
    workers = {n.node_id: n for n in (cluster.add_node(num_cpus=1, num_gpus=0) for _ in range(2))}
    seen: dict = {}

    def killer():
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                rows = driver_rows(cluster.temp_dir, "killpack")
                if rows and rows[-1].get("networks_done", 0) >= 2:    # baseline, ros (+ ros's phase 1) saved
                    seen["rows_at_kill"] = rows
                    seen["done_at_kill"] = rows[-1]["networks_done"]
                    seen["killed"] = rows[-1]["node_id"]
                    cluster.remove_node(workers[seen["killed"]], allow_graceful=False)
                    seen["node_b"] = next(n for n in workers if n != seen["killed"])
                    return
                time.sleep(0.05)
            seen["error"] = "the pack never reported 2 finished networks"
        except Exception as e:  # noqa: BLE001 - reported by the asserts below
            seen["error"] = repr(e)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    t0 = time.monotonic()
    rc, out, err = run(["--preset", "quick", "--address", cluster.address,
                        "--tracking-uri", old_head_server.uri + "\r",           # as captured through a tty
                        "--storage-path", str(tmp_path / "ray"), "--name", "killpack",
                        "--methods", *METHODS, "--imbalance", "step", "--rho", "10", "--mu", "0.5",
                        "--repetitions", "1", "--iterations", "200", "--pack-size", "5",
                        "--cpus-per-trial", "1", "--max-failures", "2"])
    th.join(30)
    assert "error" not in seen, seen.get("error")
    assert rc == 0, out + err
    assert "surrounding whitespace removed" in err

    # every report, as the driver processed it: the rows seen at the kill and those at the end, each once (when
    # Tune restores the retried trial its staging result.json may be replaced by the lagging storage copy)
    def report_id(r):
        return r.get("trial_id"), r.get("training_iteration"), r.get("timestamp"), tuple(r.get("trained_now", []))
    rows = list({report_id(r): r for r in seen["rows_at_kill"] + driver_rows(cluster.temp_dir, "killpack")}.values())
    trained = collections.Counter(i for r in rows for i in r.get("trained_now", []))
    resumed = max(r.get("resumed_from", 0) for r in rows)
    trials = tune.ExperimentAnalysis(str(sweep_dir)).trials
    final = final_networks(sweep_dir)
    nodes = [r["node_id"] for r in final]
    print(f"\n[node kill mid-pack] {time.monotonic() - t0:.0f}s; killed after {seen['done_at_kill']} networks; "
          f"trained per network {dict(sorted(trained.items()))}; retried attempt started with {resumed}; "
          f"nodes {[n[-5:] for n in nodes]}; trial failures {sum(t.num_failures for t in trials)}")
    assert sum(t.num_failures for t in trials) >= 1, "the trial lost its node and was retried"
    assert sorted(trained) == [0, 1, 2, 3, 4]
    assert [i for i, n in trained.items() if n > 1] == [], f"networks trained twice: {trained}"
    assert resumed >= seen["done_at_kill"], "the retried attempt started from the pack's checkpoint"
    assert set(nodes[:seen["done_at_kill"]]) == {seen["killed"]}
    assert seen["killed"] not in nodes[resumed:] and set(nodes[resumed:]) == {seen["node_b"]}
    counts = runs_by_key(old_head_server.uri, "killpack")
    assert len(counts) == 5 and set(counts.values()) == {1}, counts


# --------------------------------------------------------------------------- b) the head moved

def test_resume_after_the_head_moved_needs_and_takes_the_new_tracking_uri(cluster, store, old_head_server,
                                                                          tmp_path, monkeypatch):
    from sweeps import full_grid
    cluster.add_node(num_cpus=1, num_gpus=0)
    data = tmp_path / "data"
    shutil.copytree(DATA / "MNIST", data / "MNIST")
    argv = ["--preset", "quick", "--address", cluster.address, "--datasets", "mnist-sample", "mnist",
            "--data-dir", str(data), "--storage-path", str(tmp_path / "ray"), "--name", "moved",
            "--methods", "baseline", "ros", "two-phase-ros", "--imbalance", "step", "--rho", "10", "--mu", "0.5",
            "--repetitions", "1", "--iterations", "10", "--pack-size", "3", "--cpus-per-trial", "1",
            "--max-failures", "0"]
    # run 1 on the old head: the MNIST data vanishes after the driver checked it, so that trial fails
    real_init = full_grid._init_ray

    def init_after_data_vanished(a):
        (data / "MNIST").rename(data / "MNIST.away")
        return real_init(a)
    monkeypatch.setattr(full_grid, "_init_ray", init_after_data_vanished)
    rc, out, _ = run(argv + ["--tracking-uri", old_head_server.uri])
    monkeypatch.undo()
    assert rc == 1, out
    (data / "MNIST.away").rename(data / "MNIST")

    # the head is replaced: its MLflow server comes back on another address, over the same store (EFS)
    old_uri = old_head_server.uri
    old_head_server.stop()
    new = MlflowServer(store)
    try:
        rc, out, err = run(argv + ["--resume"])
        assert rc == 2, out + err
        assert old_uri in err and "--resume --tracking-uri" in err        # says what is wrong and the way out
        assert "Traceback" not in err

        rc, out, err = run(argv + ["--resume", "--tracking-uri", new.uri])
        assert rc == 0, out + err
        assert f"tracking server moved: {old_uri} -> {new.uri}" in out
        # the re-run trial's networks reached the new server through the restored MLflow callback itself
        assert "reconciliation: logged 0 finished networks" in out
        counts = runs_by_key(new.uri, "moved")
        assert len(counts) == 6 and set(counts.values()) == {1}, counts
        meta = json.loads((tmp_path / "ray" / "moved" / full_grid.META_FILE).read_text())
        assert meta["tracking_uri"] == new.uri
        assert [h["tracking_uri"] for h in meta["tracking_uri_history"]] == [old_uri]
        # and from now on plain --resume uses the new server (nothing left to do: exit 0)
        rc, out, err = run(argv + ["--resume"])
        assert rc == 0 and "tracking server moved" not in out, out + err
    finally:
        new.stop()


# --------------------------------------------------------------------------- c) the GPU smoke test on a cluster

def test_gpu_smoke_command_fails_loudly_on_a_gpu_node_without_cuda(cluster, capsys):
    """`python -m sweeps.cluster gpu-smoke` sends one num_gpus=1 task to the cluster. Here the GPU node's
    GPU is logical only (no CUDA), as on a node whose driver cannot run torch's CUDA build: exit 1, naming why."""
    import torch
    gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)
    try:
        rc = C.main(["gpu-smoke", "--address", cluster.address])
        err = capsys.readouterr().err
        if torch.cuda.is_available():                 # a real GPU machine: the smoke test passes
            assert rc == 0, err
            return
        assert rc == 1, err
        assert "GPU SMOKE TEST FAILED" in err and "CUDA is not available" in err and "driver >= 580" in err
    finally:
        cluster.remove_node(gpu_node)
