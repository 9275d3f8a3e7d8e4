"""cluster.yaml and the cluster machinery (sweeps/cluster.py; the test harness: tests/cluster_harness.py).

a) cluster.yaml: Ray's own schema check, no credentials, GPU types scale from zero, MLflow bound to
   the private address, token auth, shared storage.
b) multi-node: a head and two worker nodes (`ray.cluster_utils.Cluster`); a sweep through
   `full_grid.main --address` runs on both workers and logs each network to MLflow once.
c) autoscaling: cluster.yaml's node types on Ray's fake multi-node provider (`LocalCluster`): no GPU
   worker at the start; a sweep with `--gpus-per-trial 1` makes the autoscaler launch GPU nodes and
   finishes on them (logical GPUs: the trials fall back to the CPU).
d) a GPU node killed mid-sweep: the sweep still finishes (FailureConfig retries), MLflow still holds
   each network once, and the autoscaler replaces the node.

Every cluster here has its own ports and temp dir and is stopped by PID (never `ray stop`); see
../shared/notes/ray-local-autoscaling.md. Timings and node counts are printed (`-s` shows them);
measured on 2 shared cores: about 3.5-4 min in all (b ~85 s, c ~75 s with the head, d ~55 s).
"""
from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest
import yaml

from sweeps import cluster as C
import cluster_harness as H

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
ITERATIONS = 20
# A small slice of the quick preset: step imbalance, rho 10, mu 0.5, two methods; one network per
# Tune trial so that trials can spread over nodes.
SLICE = ["--methods", "baseline", "ros", "--imbalance", "step", "--rho", "10", "--mu", "0.5", "--pack-size", "1"]


# ---------------------------------------------------------------------------------------------
# a) cluster.yaml
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cfg() -> dict:
    return C.load_cluster_yaml(CLUSTER_YAML)


def test_cluster_yaml_passes_ray_schema(cfg):
    prepared = C.validate(cfg)                 # prepare_config + ray-schema.json + validate_config
    assert prepared["head_node_type"] == "head"
    assert C.main(["validate", str(CLUSTER_YAML)]) == 0


def test_cluster_yaml_holds_no_credentials():
    text = CLUSTER_YAML.read_text()
    assert C.find_secrets(text) == []
    # the scan does catch what it is meant to
    assert C.find_secrets("aws_secret_access_key: abc")
    assert C.find_secrets("x: AKIAABCDEFGHIJKLMNOP")
    assert C.find_secrets("RAY_AUTH_TOKEN=" + "a1B2" * 10)
    # the token reaches the nodes as a file the user made, not as a value in the YAML
    cfg = yaml.safe_load(text)
    assert any("auth_token" in remote and "auth_token" in local for remote, local in cfg["file_mounts"].items())
    assert "auth" in cfg and "ssh_private_key" not in cfg["auth"]


def test_node_types_declare_resources_and_gpu_types_scale_from_zero(cfg):
    head = cfg["head_node_type"]
    types = cfg["available_node_types"]
    for name, nt in types.items():
        assert {"CPU", "GPU"} <= set(nt["resources"]), f"{name} must declare CPU and GPU"
    assert types[head]["resources"]["GPU"] == 0
    gpu_types = {n: nt for n, nt in C.worker_node_types(cfg).items() if nt["resources"]["GPU"] > 0}
    assert {nt["resources"]["GPU"] for nt in gpu_types.values()} >= {1, 8}
    for name, nt in gpu_types.items():
        assert nt.get("min_workers", 0) == 0, f"{name} must scale from zero"
        assert nt["max_workers"] <= cfg["max_workers"]
    assert cfg["idle_timeout_minutes"] > 0 and cfg["max_workers"] >= 1


def _mlflow_command(cfg) -> str:
    cmds = [c for c in cfg["head_start_ray_commands"] if "scripts/mlflow_server.sh" in c]
    assert len(cmds) == 1, "the head starts one MLflow server in head_start_ray_commands"
    return cmds[0]


def test_mlflow_server_binds_the_private_address(cfg):
    # scripts/mlflow_server.sh runs `mlflow server --host $MLFLOW_HOST --port $MLFLOW_PORT
    # --backend-store-uri $MLFLOW_BACKEND_URI --artifacts-destination $MLFLOW_ARTIFACTS` (tests/test_postgres.py)
    cmd = _mlflow_command(cfg)
    host = re.search(r"MLFLOW_HOST=(\S+)", cmd).group(1).strip('"\'')
    assert host not in ("0.0.0.0", "::", "[::]", "*")
    m = re.search(r"\b(\w+)=\"?\$\(hostname -I \| awk '\{print \$1\}'\)", cmd)
    assert m and host == f"${m.group(1)}", "--host is the node's private address (hostname -I)"
    assert "MLFLOW_PORT=5000" in cmd and cmd.rstrip().endswith("mlflow_server.sh restart")
    assert "MLFLOW_BACKEND_URI=postgresql://mlflow@127.0.0.1:5432/mlflow" in cmd     # password: ~/.pgpass
    assert "MLFLOW_ARTIFACTS=/shared/mlflow/artifacts" in cmd
    setup = "\n".join(cfg["head_setup_commands"])
    assert "postgresql" in setup and "scripts/mlflow_db.sh ~/.mlflow-db-password.txt" in setup
    assert cfg["file_mounts"]["~/.mlflow-db-password.txt"] == "~/.mlflow-db-password.txt"
    # MLflow comes up before Ray (workers log to it as soon as they run trials)
    ray_start = next(i for i, c in enumerate(cfg["head_start_ray_commands"]) if "ray start --head" in c)
    assert cfg["head_start_ray_commands"].index(cmd) < ray_start


def test_token_auth_shared_storage_and_project_setup(cfg):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cfg[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    setup = "\n".join(cfg["setup_commands"])
    assert "mount -t nfs4" in setup and "/shared" in setup
    assert "git clone" in setup and "bash scripts/setup.sh" in setup
    assert C.PLACEHOLDERS["IMBALANCE_REPO_URL"] in setup
    rendered = yaml.safe_load(C.render(CLUSTER_YAML.read_text(), {"IMBALANCE_REPO_URL": "https://example.org/r.git",
                                                                   "IMBALANCE_NFS_SERVER": "10.0.0.9"}))
    C.validate(rendered)
    assert "https://example.org/r.git" in "\n".join(rendered["setup_commands"])
    assert "10.0.0.9" in "\n".join(rendered["setup_commands"])
    assert C.PLACEHOLDERS["IMBALANCE_NFS_SERVER"] not in "\n".join(rendered["setup_commands"])


def test_fake_provider_config_is_the_yamls_node_types(cfg):
    fake = H.fake_provider_config(cfg, 6390, head_ip="127.0.0.1")
    from ray.autoscaler._private.util import validate_config
    validate_config(fake)
    types = fake["available_node_types"]
    assert fake["head_node_type"] == "ray.head.default" and "head" not in types
    assert types["ray.head.default"]["resources"] == cfg["available_node_types"]["head"]["resources"]
    for name, nt in C.worker_node_types(cfg).items():
        assert types[name]["resources"] == nt["resources"]
        assert types[name]["min_workers"] == 0
    p = fake["provider"]
    assert p["type"] == "external" and p["module"] == H.FAKE_PROVIDER_MODULE
    assert p["gcs_address"] == "127.0.0.1:6390" and p["head_node_id"] == H.FAKE_HEAD_NODE_ID
    assert fake["idle_timeout_minutes"] == cfg["idle_timeout_minutes"]
    small = H.fake_provider_config(cfg, 6390, head_ip="127.0.0.1", max_workers=2, node_types=["gpu_1x"])
    assert set(small["available_node_types"]) == {"ray.head.default", "gpu_1x"}
    assert small["max_workers"] == 2 and small["available_node_types"]["gpu_1x"]["max_workers"] == 2


# ---------------------------------------------------------------------------------------------
# helpers for the cluster tests
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_env():
    """Local test clusters: token auth with the local default token, Ray's files in a temp dir of our own
    (cluster_harness.ray_test_env)."""
    with H.ray_test_env("rct_") as tmp:
        yield tmp


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One MLflow store (sqlite; creating one takes ~10 s here) and Tune storage for the cluster
    tests; each sweep has its own name (= MLflow experiment, Tune folder)."""
    return tmp_path_factory.mktemp("cluster_sweeps")


def full_grid():
    from sweeps import full_grid as fg
    return fg


def expected_networks(repetitions: int) -> list:
    from sweeps import grids
    o = grids.Overrides(methods=("baseline", "ros"), imbalance=("step",), rho=(10.0,), mu=(0.5,),
                        repetitions=repetitions, iterations=ITERATIONS)
    return grids.expand(grids.PRESETS["quick"], o)


def run_sweep(address: str, tmp: Path, name: str, *, repetitions: int, gpus: int, max_failures: int = 0) -> int:
    argv = ["--preset", "quick", "--address", address, "--tracking-uri", mlflow_uri(tmp),
            "--storage-path", str(tmp / "ray_results"), "--name", name,
            "--iterations", str(ITERATIONS), "--repetitions", str(repetitions),
            "--cpus-per-trial", "1", "--gpus-per-trial", str(gpus), "--max-failures", str(max_failures), *SLICE]
    import ray
    try:
        return full_grid().main(argv)
    finally:
        ray.shutdown()


def mlflow_uri(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'mlflow.db'}"


def mlflow_trial_keys(tmp: Path, name: str) -> list[str]:
    """The trial_key tag of every (non-deleted) run of the sweep's experiment."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=mlflow_uri(tmp))
    exp = client.get_experiment_by_name(name)
    assert exp is not None, f"no MLflow experiment {name!r}"
    runs = client.search_runs([exp.experiment_id], max_results=10000)
    return [r.data.tags.get("trial_key") for r in runs]


def assert_each_network_once(tmp: Path, name: str, n_networks: int) -> None:
    keys = mlflow_trial_keys(tmp, name)
    assert None not in keys, "every run carries a trial_key"
    assert len(keys) == len(set(keys)), f"a network was logged twice: {sorted(keys)}"
    assert len(keys) == n_networks, f"{len(keys)} runs in MLflow for {n_networks} networks"


class NodeWatch:
    """Samples a cluster's alive worker nodes in the background (for the counts in the report)."""

    def __init__(self, list_workers, period_s: float = 0.5):
        self.list_workers, self.period_s = list_workers, period_s
        self.max_alive, self.ever = 0, set()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                ids = {n["node_id"] for n in self.list_workers()}
                self.max_alive = max(self.max_alive, len(ids))
                self.ever |= ids
            except Exception:
                pass
            self._stop.wait(self.period_s)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)


# ---------------------------------------------------------------------------------------------
# b) multi-node: head + 2 workers, no autoscaler
# ---------------------------------------------------------------------------------------------

def test_sweep_runs_on_several_nodes(ray_env, store):
    t0 = time.monotonic()
    temp_dir = os.path.join(ray_env, "ray")
    cluster = H.multinode_cluster(temp_dir)
    try:
        workers = {cluster.add_node(num_cpus=1, num_gpus=1).node_id for _ in range(2)}
        t_up = time.monotonic() - t0
        rc = run_sweep(cluster.address, store, "multinode", repetitions=1, gpus=1)
        t_sweep = time.monotonic() - t0 - t_up
        assert rc == 0
        nodes = H.trial_nodes(store / "ray_results" / "multinode", temp_dir)
        used = set().union(*nodes.values()) if nodes else set()
        print(f"\n[multi-node] up {t_up:.0f}s, sweep {t_sweep:.0f}s; {len(nodes)} trials on "
              f"{len(used)} nodes {sorted(n[-6:] for n in used)} (workers {sorted(n[-6:] for n in workers)})")
        assert used <= workers, "trials run on the worker nodes only (the head has no CPU)"
        assert len(used) >= 2, f"trials ran on one node only: {nodes}"
        assert_each_network_once(store, "multinode", len(expected_networks(1)))
    finally:
        leftovers = H.stop_multinode(cluster)
        assert not leftovers, f"processes left after Cluster.shutdown: {leftovers}"


# ---------------------------------------------------------------------------------------------
# c) + d) autoscaling from cluster.yaml on the fake multi-node provider
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def autoscaling_cluster(cfg, ray_env):
    """cluster.yaml's node types, at most 2 workers at a time (this machine has 2 cores)."""
    fake = H.fake_provider_config(cfg, H.free_ports(1)[0], max_workers=2)
    t0 = time.monotonic()
    with H.LocalCluster(fake, env={"RAY_SCHEDULER_EVENTS": "0"}) as cluster:
        cluster.t_up = time.monotonic() - t0
        yield cluster
        temp_dir = cluster.temp_dir
    left = H.processes_with(temp_dir)
    assert not left, f"LocalCluster.stop left processes: {left}"


def test_autoscaler_launches_gpu_nodes_for_the_sweep(autoscaling_cluster, store):
    c = autoscaling_cluster
    assert c.worker_nodes() == [], "the cluster starts with no worker node"
    assert not any(n["resources"].get("GPU") for n in c.alive_nodes()), "and no GPU"
    t0 = time.monotonic()
    with NodeWatch(c.worker_nodes) as watch:
        rc = run_sweep(c.address, store, "autoscale", repetitions=1, gpus=1, max_failures=1)
    t_sweep = time.monotonic() - t0
    assert rc == 0
    types = c.node_types()
    gpu_nodes = {n["node_id"] for n in c.worker_nodes() if n["resources"].get("GPU", 0) >= 1}
    nodes = H.trial_nodes(store / "ray_results" / "autoscale", c.temp_dir)
    used = set().union(*nodes.values()) if nodes else set()
    print(f"\n[autoscale] head up {c.t_up:.0f}s, sweep {t_sweep:.0f}s; workers seen {len(watch.ever)} "
          f"(max {watch.max_alive} alive): {sorted((n[-5:], types.get(n)) for n in watch.ever)}; "
          f"trials on {sorted(n[-5:] for n in used)}")
    assert watch.ever, "the autoscaler launched no worker node"
    assert used and used <= gpu_nodes, f"trials ran on {used}, GPU workers are {gpu_nodes}"
    assert {types[n] for n in used} <= set(C.worker_node_types(C.load_cluster_yaml(CLUSTER_YAML)))
    assert_each_network_once(store, "autoscale", len(expected_networks(1)))


def _training_worker_node(cluster) -> str | None:
    """A worker node on which a Tune trial is training right now."""
    busy = [n for n in cluster.running("ray::ImplicitFunc.train") if n != H.FAKE_HEAD_NODE_ID]
    return busy[0] if busy else None


def test_killed_node_is_survived_and_replaced(autoscaling_cluster, store):
    from ray import tune
    c = autoscaling_cluster
    seen: dict = {}

    def killer():
        try:
            node = c.wait_for(lambda: _training_worker_node(c), timeout_s=180, interval_s=0.3,
                              what="a trial training on a worker node")
            time.sleep(2)                                  # well into the trial (it runs ~15 s here)
            seen["before"] = {n["node_id"] for n in c.worker_nodes()}
            seen["busy"] = node in c.running("ray::ImplicitFunc.train")
            seen["killed"] = c.kill_node(node)
            seen["t_kill"] = time.monotonic()
            new = c.wait_for(lambda: [n["node_id"] for n in c.worker_nodes() if n["node_id"] not in seen["before"]],
                             timeout_s=120, what="a replacement node")
            seen["replacement"] = new
            seen["t_replaced"] = time.monotonic()
        except Exception as e:                            # reported by the asserts below
            seen["error"] = repr(e)

    t0 = time.monotonic()
    with NodeWatch(c.worker_nodes) as watch:
        th = threading.Thread(target=killer, daemon=True)
        th.start()
        rc = run_sweep(c.address, store, "nodeloss", repetitions=2, gpus=1, max_failures=3)
        th.join(130)
    t_sweep = time.monotonic() - t0
    trials = tune.ExperimentAnalysis(str(store / "ray_results" / "nodeloss")).trials
    failures = sum(t.num_failures for t in trials)
    print(f"\n[node loss] sweep {t_sweep:.0f}s; killed {seen.get('killed', '?')[-5:]} while training "
          f"{seen.get('busy')}, replacement {[n[-5:] for n in seen.get('replacement', [])]} after "
          f"{seen.get('t_replaced', 0) - seen.get('t_kill', 0):.1f}s; trial failures retried {failures}; "
          f"workers seen {len(watch.ever)} (max {watch.max_alive} alive)")
    assert "error" not in seen, seen.get("error")
    assert seen["busy"], "the node was killed while a trial was training on it"
    assert rc == 0, "the sweep finishes despite the lost node"
    assert failures >= 1 and all(t.status == "TERMINATED" for t in trials), \
        "the killed trial failed and was retried to the end (FailureConfig)"
    assert seen["killed"] not in {n["node_id"] for n in c.alive_nodes()}
    assert seen["replacement"], "the autoscaler replaced the killed node"
    assert_each_network_once(store, "nodeloss", len(expected_networks(2)))
