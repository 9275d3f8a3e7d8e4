"""Test harness for the cluster tests: cluster.yaml's node types as a local autoscaling Ray cluster on
Ray's fake multi-node provider, multi-node clusters of `ray.cluster_utils.Cluster`, and the process
bookkeeping that starts and stops them on a shared machine. Not part of the package: only the tests
(tests/test_cluster*.py, tests/test_sweep_cluster_options.py) use it.

`LocalCluster(fake_provider_config(load_cluster_yaml('cluster.yaml'), head_port))` starts a head
with Ray's autoscaler (v2) on this machine: the GPU worker types of cluster.yaml then come up as
extra raylets (logical `GPU`) when work asks for them, and a killed one is replaced. Everything it
starts it stops again by PID (never `ray stop`, which is machine-wide); facts and traps in
../shared/notes/ray-local-autoscaling.md.

    python tests/cluster_harness.py [cluster.yaml] --port 6379     # print the fake-provider config
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import yaml

from sweeps import compat
from sweeps.cluster import DEFAULT_CLUSTER_YAML, load_cluster_yaml

FAKE_PROVIDER_MODULE = compat.FAKE_PROVIDER_CLASS
FAKE_HEAD_NODE_TYPE = "ray.head.default"
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"     # = FakeMultiNodeProvider's FAKE_HEAD_NODE_ID
FAST_HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}

# Keys every cluster config carries once Ray has filled in its defaults. The fake provider has no
# defaults file in the wheel, so the fake config lists them all (empty).
_EMPTY_KEYS: dict[str, Any] = {
    "docker": {},
    "file_mounts": {},
    "cluster_synced_files": [],
    "file_mounts_sync_continuously": False,
    "rsync_exclude": [],
    "rsync_filter": [],
    "initialization_commands": [],
    "setup_commands": [],
    "head_setup_commands": [],
    "worker_setup_commands": [],
    "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
}



# ---------------------------------------------------------------------------------------------
# cluster.yaml -> Ray's fake multi-node provider (autoscaler v2, external provider form)
# ---------------------------------------------------------------------------------------------

def node_ip() -> str:
    return compat.node_ip_address()


def fake_provider_config(cluster_cfg: dict, head_port: int, *, head_ip: str | None = None,
                         max_workers: int | None = None, idle_timeout_minutes: float | None = None,
                         node_types: Iterable[str] | None = None,
                         resources: dict[str, dict[str, int]] | None = None,
                         cluster_name: str | None = None) -> dict:
    """A config for Ray's fake multi-node provider made from cluster.yaml's node types.

    The head type becomes `ray.head.default` (the name the fake provider gives its head); every
    node type keeps its `resources`, `min_workers`, `max_workers`; `node_config`, setup commands,
    mounts and auth are dropped (nothing of them runs on a fake node). Optional overrides, for a
    small machine: `max_workers` (global cap), `idle_timeout_minutes`, `node_types` (the worker
    types to keep), `resources` ({type: resources} replacing a type's resources).
    """
    head_type = cluster_cfg["head_node_type"]
    types = cluster_cfg["available_node_types"]
    keep = set(types) - {head_type} if node_types is None else set(node_types)
    unknown = keep - set(types)
    if unknown:
        raise ValueError(f"node types {sorted(unknown)} are not in the cluster config ({sorted(types)})")
    resources = resources or {}
    unknown = set(resources) - set(types)
    if unknown:
        raise ValueError(f"resources given for unknown node types {sorted(unknown)}")

    def resources_of(name: str) -> dict[str, int]:
        res = resources.get(name, types[name].get("resources"))
        if not res or "CPU" not in res:
            raise ValueError(f"node type {name!r} must declare resources with CPU (and GPU) explicitly")
        return {k: int(v) for k, v in res.items()}

    available = {FAKE_HEAD_NODE_TYPE: {"resources": resources_of(head_type), "node_config": {},
                                       "min_workers": 0, "max_workers": 0}}
    global_max = int(cluster_cfg.get("max_workers", 2) if max_workers is None else max_workers)
    for name in sorted(keep):
        if name == head_type:
            continue
        nt = types[name]
        available[name] = {
            "resources": resources_of(name),
            "node_config": {},
            "min_workers": int(nt.get("min_workers", 0)),
            "max_workers": min(int(nt.get("max_workers", global_max)), global_max),
        }
    ip = head_ip or node_ip()
    config = {
        "cluster_name": cluster_name or f"fake-{cluster_cfg.get('cluster_name', 'cluster')}",
        "max_workers": global_max,
        "upscaling_speed": float(cluster_cfg.get("upscaling_speed", 1.0)),
        "idle_timeout_minutes": float(cluster_cfg.get("idle_timeout_minutes", 5)
                                      if idle_timeout_minutes is None else idle_timeout_minutes),
        "provider": {
            "type": "external",
            "module": FAKE_PROVIDER_MODULE,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "launch_multiple": True,
            "head_node_id": FAKE_HEAD_NODE_ID,
            "gcs_address": f"{ip}:{int(head_port)}",
        },
        "auth": {},
        "available_node_types": available,
        "head_node_type": FAKE_HEAD_NODE_TYPE,
        **copy.deepcopy(_EMPTY_KEYS),
    }
    return config


# ---------------------------------------------------------------------------------------------
# Processes: found by the cluster's temp dir on their command line, plus their descendants
# (Ray renames its worker processes, so those are found through their parent).
# ---------------------------------------------------------------------------------------------

def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return int(stat[stat.rindex(")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def processes_with(marker: str, *, descendants: bool = True) -> dict[int, str]:
    """{pid: command line} of the processes whose command line contains `marker`, and (by default)
    every descendant of those. Never includes this process."""
    me = os.getpid()
    pids = _all_pids()
    found = {p for p in pids if p != me and marker in _cmdline(p)}
    if descendants and found:
        parent = {p: _ppid(p) for p in pids}
        grew = True
        while grew:
            grew = False
            for p, pp in parent.items():
                if pp in found and p not in found and p != me:
                    found.add(p)
                    grew = True
    return {p: _cmdline(p) for p in sorted(found)}


def terminate(pids: Iterable[int], grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after `grace_s`."""
    pids = [p for p in pids if p != os.getpid()]
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for p in pids:
        if _alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)


def free_ports(n: int) -> list[int]:
    """n distinct ports free right now (bound together, so they differ)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


# ---------------------------------------------------------------------------------------------
# LocalCluster
# ---------------------------------------------------------------------------------------------

def _is_monitor(cmd: str) -> bool:
    return "autoscaler/_private/monitor.py" in cmd or "autoscaler/v2/monitor.py" in cmd


class LocalCluster:
    """A head (with the autoscaler) on this machine, for a fake-provider config.

        with LocalCluster(fake_provider_config(cfg, port), head_port=port) as c:
            full_grid.main([... '--address', c.address ...])

    The head gets its own temp dir (short: unix socket paths are limited), its own ports, the
    environment for autoscaler v2 and the fake provider, the driver's `RAY_AUTH_MODE` (token when unset,
    with the local default token, ~/.ray/auth_token, which `ray_test_env` makes), and a fast
    health check so a killed node is noticed in seconds. `config` may also be a path to a YAML.
    """

    def __init__(self, config: dict | str | os.PathLike, head_port: int | None = None, *,
                 temp_dir: str | None = None, system_config: dict | None = None,
                 head_ip: str | None = None, env: dict[str, str] | None = None,
                 object_store_memory: int = 150 * 1024 ** 2, start_timeout_s: float = 60):
        if not isinstance(config, dict):
            config = load_cluster_yaml(config)
        self.config = copy.deepcopy(config)
        gcs = self.config["provider"].get("gcs_address")
        self.head_ip = head_ip or (gcs.rsplit(":", 1)[0] if gcs else node_ip())
        if head_port is None:
            head_port = int(gcs.rsplit(":", 1)[1]) if gcs else free_ports(1)[0]
        self.head_port = int(head_port)
        self.config["provider"]["gcs_address"] = f"{self.head_ip}:{self.head_port}"
        self.address = f"{self.head_ip}:{self.head_port}"
        self.system_config = {**FAST_HEALTH_CHECK, **(system_config or {})}
        self.extra_env = dict(env or {})
        self.object_store_memory = int(object_store_memory)
        self.start_timeout_s = start_timeout_s
        self._own_temp = temp_dir is None
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="rc_", dir="/tmp")
        self.ports: dict[str, int] = {}
        self.started = False
        self.log: list[str] = []

    # -- environment -------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "RAY_FAKE_CLUSTER": "1",
            "RAY_enable_autoscaler_v2": "1",
            "RAY_CLOUD_INSTANCE_ID": self.config["provider"].get("head_node_id", FAKE_HEAD_NODE_ID),
            "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"),      # the driver's mode, if it set one
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "RAY_TMPDIR": self.temp_dir,          # ray_current_cluster etc. stay in our temp dir
            "RAY_USAGE_STATS_ENABLED": "0",
        })
        env.update(self.extra_env)
        return env

    def _ray_bin(self) -> str:
        exe = Path(sys.executable).with_name("ray")
        return str(exe) if exe.exists() else (shutil.which("ray") or "ray")

    # -- start / stop ------------------------------------------------------------------------
    def start(self) -> "LocalCluster":
        compat.validate_cluster_config(self.config)
        head = self.config["available_node_types"][self.config["head_node_type"]]["resources"]
        head = dict(head)
        cfg_path = os.path.join(self.temp_dir, "autoscaling.yaml")
        with open(cfg_path, "w") as f:
            yaml.safe_dump(self.config, f, sort_keys=False)
        names = ["dashboard", "agent_listen", "agent_grpc", "metrics", "runtime_env",
                 "object_manager", "node_manager"]
        self.ports = dict(zip(names, free_ports(len(names))))
        p = self.ports
        cmd = [self._ray_bin(), "start", "--head", f"--port={self.head_port}",
               f"--node-ip-address={self.head_ip}",
               f"--autoscaling-config={cfg_path}", f"--temp-dir={self.temp_dir}",
               f"--num-cpus={int(head.pop('CPU', 0))}", f"--num-gpus={int(head.pop('GPU', 0))}",
               f"--object-store-memory={self.object_store_memory}",
               "--include-dashboard=false", f"--dashboard-port={p['dashboard']}",
               f"--dashboard-agent-listen-port={p['agent_listen']}",
               f"--dashboard-agent-grpc-port={p['agent_grpc']}",
               f"--metrics-export-port={p['metrics']}",
               f"--runtime-env-agent-port={p['runtime_env']}",
               f"--object-manager-port={p['object_manager']}",
               f"--node-manager-port={p['node_manager']}",
               "--min-worker-port=0", "--max-worker-port=0",
               "--disable-usage-stats",
               "--system-config=" + json.dumps(self.system_config, separators=(",", ":"))]
        if head:
            cmd.append("--resources=" + json.dumps(head))
        self.started = True     # from here on, stop() cleans up whatever came up
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                              timeout=self.start_timeout_s)
        self.log.append(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start --head failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        self.wait_for(lambda: self.alive_nodes(), timeout_s=30, what="the head node")
        return self

    def processes(self) -> dict[int, str]:
        """{pid: command line} of this cluster's processes (found by its temp dir) and their children."""
        return processes_with(self.temp_dir)

    def stop(self) -> None:
        """Stop every process this cluster started, by PID: the autoscaler first (so it launches no
        more nodes), then raylets, GCS, agents and workers; SIGTERM, then SIGKILL."""
        if not self.started:
            return
        try:
            import ray
            if ray.is_initialized() and getattr(ray.get_runtime_context(), "gcs_address", None) == self.address:
                ray.shutdown()
        except Exception:
            pass
        for _ in range(3):
            procs = self.processes()
            if not procs:
                break
            monitors = [p for p, c in procs.items() if _is_monitor(c)]
            if monitors:
                terminate(monitors, grace_s=2)
            terminate([p for p in self.processes()], grace_s=3)
        self.started = False
        if self._own_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        try:
            compat.clear_gcs_address_cache()
        except Exception:
            pass

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- inspection --------------------------------------------------------------------------
    def _gcs_client(self):
        return compat.gcs_client(self.address)

    def nodes(self) -> list[dict]:
        """Every node the GCS knows (dead ones included): node_id, alive, ip, resources,
        raylet_socket, is_head, node_type (the autoscaler's type name, when it set one)."""
        infos = self._gcs_client().get_all_node_info(timeout=10)
        out = []
        for node_id, info in infos.items():
            nid = node_id.hex() if hasattr(node_id, "hex") else str(node_id)
            labels = dict(getattr(info, "labels", {}) or {})
            out.append({
                "node_id": nid,
                "alive": info.state == 0,          # GcsNodeInfo.ALIVE
                "ip": info.node_manager_address,
                "resources": dict(info.resources_total),
                "raylet_socket": info.raylet_socket_name,
                "is_head": bool(info.is_head_node),
                "node_type": labels.get("ray.io/node-type-name") or labels.get("ray.io/node_type")
                or ("ray.head.default" if info.is_head_node else None),
                "labels": labels,
            })
        return out

    def node_types(self) -> dict[str, str]:
        """{node id: node type name} of the nodes the autoscaler (v2) reports as active or idle."""
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(self.address, timeout=10)
        return {n.node_id: n.ray_node_type_name for n in status.active_nodes + status.idle_nodes
                if n.node_id}

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.nodes() if n["alive"]]

    def worker_nodes(self) -> list[dict]:
        return [n for n in self.alive_nodes() if not n["is_head"]]

    def running(self, title_prefix: str = "ray::ImplicitFunc.train") -> dict[str, list[int]]:
        """{node id: pids} of this cluster's worker processes whose title starts with `title_prefix`
        (Ray titles a worker by what it runs; a Tune function trial that is training is
        `ray::ImplicitFunc.train`). A worker is mapped to its node through its parent raylet."""
        procs = self.processes()
        raylets = {}
        for pid, cmd in procs.items():
            m = re.search(r"--raylet_socket_name=(\S+)", cmd)
            if m and cmd.split()[0].endswith("raylet"):
                raylets[pid] = m.group(1)
        socket_node = {n["raylet_socket"]: n["node_id"] for n in self.nodes()}
        out: dict[str, list[int]] = {}
        for pid, cmd in procs.items():
            if not cmd.startswith(title_prefix):
                continue
            p, hops = pid, 0
            while p and p not in raylets and hops < 5:
                p, hops = _ppid(p), hops + 1
            if p in raylets and raylets[p] in socket_node:
                out.setdefault(socket_node[raylets[p]], []).append(pid)
        return out

    def raylet_pid(self, node_id: str) -> int:
        node = next((n for n in self.nodes() if n["node_id"] == node_id), None)
        if node is None:
            raise KeyError(f"no node {node_id} in this cluster")
        marker = f"--raylet_socket_name={node['raylet_socket']}"
        pids = [p for p, c in processes_with(self.temp_dir, descendants=False).items()
                if marker in c and "raylet" in c.split()[0]]
        if len(pids) != 1:
            raise RuntimeError(f"expected one raylet for node {node_id}, found {pids}")
        return pids[0]

    def kill_node(self, node_id: str | None = None, sig: int = signal.SIGKILL) -> str:
        """Kill a worker node's raylet by PID (its workers and agents follow). Returns the node id."""
        if node_id is None:
            workers = self.worker_nodes()
            if not workers:
                raise RuntimeError("no alive worker node to kill")
            node_id = workers[0]["node_id"]
        os.kill(self.raylet_pid(node_id), sig)
        return node_id

    def wait_for(self, predicate, timeout_s: float = 60, interval_s: float = 0.5, what: str = "condition"):
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = predicate()
            except Exception:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
            time.sleep(interval_s)


# ---------------------------------------------------------------------------------------------
# Where did trials run? Tune records each result's worker `pid` (and `node_ip`, the same for every
# node on one machine); each Ray worker's log names its pid and its node id.
# ---------------------------------------------------------------------------------------------

_NODE_ID_RE = re.compile(r"node_id=([0-9a-f]{56})")


def node_of_worker_pid(temp_dir: str | os.PathLike, pid: int) -> str | None:
    """The node id of the Ray worker process `pid` of the cluster whose temp dir is `temp_dir`,
    read from its core-worker log (<temp>/session_*/logs/python-core-worker-<id>_<pid>.log)."""
    for log in sorted(Path(temp_dir).glob(f"session_*/logs/python-core-worker-*_{int(pid)}.log")):
        with open(log, errors="replace") as f:
            for line in f:
                m = _NODE_ID_RE.search(line)
                if m:
                    return m.group(1)
    return None


def tune_results(experiment_dir: str | os.PathLike) -> list[dict]:
    """Every result row of every trial of a Tune experiment (its trial dirs' result.json)."""
    rows = []
    for path in sorted(Path(experiment_dir).glob("*/result.json")):
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                row.setdefault("trial_dir", path.parent.name)
                rows.append(row)
    return rows


def trial_nodes(experiment_dir: str | os.PathLike, temp_dir: str | os.PathLike) -> dict[str, set[str]]:
    """{trial dir: node ids it reported from}: a result's own `node_id` when the trainable reports
    one, else the node of the worker pid Tune recorded."""
    out: dict[str, set[str]] = {}
    for row in tune_results(experiment_dir):
        node = row.get("node_id") or (node_of_worker_pid(temp_dir, row["pid"]) if row.get("pid") else None)
        if node:
            out.setdefault(row["trial_dir"], set()).add(node)
    return out


# ---------------------------------------------------------------------------------------------
# The driver's Ray environment, and multi-node clusters of `ray.cluster_utils.Cluster`
# ---------------------------------------------------------------------------------------------

def _refresh_ray_config() -> None:
    """Make this process see RAY_AUTH_MODE as it is now. Ray caches the mode (and the token) per process:
    an earlier local ray.init() here (tests/test_full_grid.py) switches token auth on, and a test cluster
    started without token auth after it had every actor of this driver die. So the test clusters use
    token auth too, with the same default token."""
    compat.refresh_ray_config()


@contextlib.contextmanager
def ray_test_env(prefix: str = "rct_"):
    """Local test clusters: token auth with the local default token (~/.ray/auth_token, made if missing),
    Ray's address file etc. in a temp dir of our own (yielded; its `ray` folder is made). The
    environment is restored afterwards."""
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED")}
    tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.makedirs(os.path.join(tmp, "ray"), exist_ok=True)
    os.environ.update(RAY_AUTH_MODE="token", RAY_TMPDIR=tmp, RAY_USAGE_STATS_ENABLED="0")
    _refresh_ray_config()
    compat.ensure_auth_token()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _refresh_ray_config()


def multinode_cluster(temp_dir: str, system_config: dict | None = None):
    """A `ray.cluster_utils.Cluster` whose head has no CPU or GPU (it runs no trial), its own ports and
    temp dir (`.temp_dir`), no dashboard; tests add and remove worker nodes. Stop it with
    `stop_multinode`."""
    from ray.cluster_utils import Cluster

    ports = free_ports(5)
    head = dict(gcs_server_port=ports[0], num_cpus=0, num_gpus=0, temp_dir=temp_dir, include_dashboard=False,
                dashboard_port=ports[1], dashboard_agent_listen_port=ports[2], metrics_export_port=ports[3],
                runtime_env_agent_port=ports[4], min_worker_port=0, max_worker_port=0)
    if system_config is not None:
        head["_system_config"] = system_config
    cluster = Cluster(initialize_head=True, head_node_args=head)
    cluster.temp_dir = temp_dir
    return cluster


def stop_multinode(cluster) -> dict[int, str]:
    """`Cluster.shutdown`, then terminate whatever of it is still running (by its temp dir). Returns
    those leftovers ({pid: command line}; empty when the shutdown stopped everything)."""
    cluster.shutdown()
    leftovers = processes_with(cluster.temp_dir)
    terminate(leftovers)
    return leftovers


# ---------------------------------------------------------------------------------------------
# CLI: the fake-provider config of a cluster config (what LocalCluster would start)
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tests/cluster_harness.py",
                                 description="print the fake multi-node provider config for a cluster config")
    ap.add_argument("path", nargs="?", default=str(DEFAULT_CLUSTER_YAML))
    ap.add_argument("--port", type=int, default=6379)
    args = ap.parse_args(argv)
    print(yaml.safe_dump(fake_provider_config(load_cluster_yaml(args.path), args.port), sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
