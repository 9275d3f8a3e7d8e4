"""A local sweep's Ray stays off the network, and the driver never joins a cluster on the network without
token auth (sweeps/full_grid.py `_init_ray`).

- Every TCP socket that the sweep's Ray processes listen on (GCS, raylet, agents, the trial workers and the
  driver itself) is on 127.0.0.1: read from /proc (each process's socket inodes against /proc/net/tcp and
  tcp6), sampled while a small sweep runs, so the trial workers' servers are seen too. Before the fix,
  `ray.init(address="local")` left 7 listeners on `*` (`ss -ltnp`); the lister is shown to see such a
  wildcard listener.
- RAY_AUTH_MODE=disabled with a cluster on a non-loopback address: refused with the reason (the driver's
  UsageError: `error: ...`, exit 2), before Ray starts.
"""
from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from sweeps import cluster as C
from sweeps import compat
from sweeps import full_grid


# --------------------------------------------------------------------------- listening sockets from /proc

def _listening_inodes() -> dict[int, tuple[str, int]]:
    """{socket inode: (local address, port)} of every TCP socket in LISTEN state (IPv4 and IPv6)."""
    out = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, state, inode = f[1], f[3], int(f[9])
            if state != "0A":                                      # TCP_LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            raw = bytes.fromhex(addr_hex)
            if v6:      # four 32-bit words, each in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                addr = ipaddress.IPv6Address(raw)
                addr = addr.ipv4_mapped or addr
            else:
                addr = ipaddress.IPv4Address(raw[::-1])
            out[inode] = (str(addr), int(port_hex, 16))
    return out


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def _descendants(root: int) -> set[int]:
    parent = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                stat = open(f"/proc/{p}/stat").read()
                parent[int(p)] = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, grew = {root}, True
    while grew:
        grew = False
        for p, pp in parent.items():
            if pp in found and p not in found:
                found.add(p)
                grew = True
    return found


def _comm(pid: int) -> str:
    """The process's program (`gcs_server`, `raylet`, `python`) or Ray's title for it (`ray::IDLE`)."""
    try:
        argv0 = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "?"
    return argv0.split()[0] if argv0.startswith("ray::") else os.path.basename(argv0)


def listeners(pids) -> dict[tuple[str, int], str]:
    """{(address, port): process} of the TCP sockets the given processes listen on."""
    table = _listening_inodes()
    out = {}
    for pid in pids:
        for inode in _socket_inodes(pid) & set(table):
            out[table[inode]] = f"{pid} {_comm(pid)}"
    return out


def _is_loopback(addr: str) -> bool:
    return ipaddress.ip_address(addr).is_loopback


def test_the_lister_sees_a_wildcard_listener():
    """The check below would catch what `ray.init(address="local")` did before: a server on every interface."""
    code = ("import socket, sys, time; s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen(); "
            "print(s.getsockname()[1], flush=True); time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        seen = listeners([child.pid])
        assert seen.keys() == {("0.0.0.0", port)}
        assert not _is_loopback("0.0.0.0")
    finally:
        child.kill()
        child.wait()


# --------------------------------------------------------------------------- a local sweep's Ray

@pytest.mark.slow
def test_every_ray_listener_of_a_local_sweep_is_on_loopback(tmp_path, monkeypatch, capsys):
    """A small rehearsed sweep (the real Tune and MLflow path, no training), its Ray processes' listening
    sockets sampled every 0.3 s from Ray's start to its shutdown."""
    import ray
    if ray.is_initialized():
        ray.shutdown()
    seen: dict[tuple[str, int], str] = {}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            mine = _descendants(os.getpid())
            seen.update(listeners(mine))
            stop.wait(0.3)

    real = full_grid._init_ray
    node_ips = []

    def init_and_watch(opts):
        started = real(opts)
        node_ips.append(ray.util.get_node_ip_address())
        threading.Thread(target=sample, daemon=True).start()
        return started

    monkeypatch.setattr(full_grid, "_init_ray", init_and_watch)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = ["--preset", "quick", "--rehearse", "--rho", "10", "--methods", "baseline", "ros", "--repetitions", "2",
            "--pack-size", "1", "--name", "loopback", "--storage-path", str(tmp_path / "ray"),
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    t0 = time.monotonic()
    try:
        rc = full_grid.main(argv)
    finally:
        stop.set()
    out = capsys.readouterr().out
    print(f"\n[loopback] sweep {time.monotonic() - t0:.0f}s; node address {node_ips}; {len(seen)} Ray listeners:")
    for (addr, port), proc in sorted(seen.items(), key=lambda kv: kv[1]):
        print(f"  {addr}:{port}  {proc}")
    assert rc == 0, out
    assert node_ips == ["127.0.0.1"]
    procs = " ".join(seen.values())
    # the GCS, the raylet, the driver's core worker and trial workers all listen: all of them were seen
    assert "gcs_server" in procs and "raylet" in procs and len(seen) >= 5, seen
    wide = {f"{a}:{p}": proc for (a, p), proc in seen.items() if not _is_loopback(a)}
    assert not wide, f"Ray listeners of a local sweep not on loopback: {wide}"
    # the switch that keeps the node on 127.0.0.1 is the driver's only while Ray starts
    ray_constants = compat.ray_constants()
    assert ray_constants.ENABLE_RAY_CLUSTER is True
    assert os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR) is None


# --------------------------------------------------------------------------- no token auth on the network

@pytest.fixture
def loopback_mode(monkeypatch):
    """Ray's loopback-only mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 when ray was imported), as on the
    rehearsal's head: 127.0.0.1 stays 127.0.0.1."""
    monkeypatch.setattr(compat.ray_constants(), "ENABLE_RAY_CLUSTER", False)


@pytest.mark.parametrize("address", ["10.0.3.7:6379", "ray://10.0.3.7:10001", "192.0.2.2:6379"])
def test_disabled_auth_is_refused_off_loopback(address):
    reason = C.refuse_unauthenticated_cluster(address, "disabled")
    assert reason and "RAY_AUTH_MODE=token" in reason and "not a loopback address" in reason
    assert "10.0.3.7" in reason or "192.0.2.2" in reason
    assert C.refuse_unauthenticated_cluster(address, "token") is None
    assert C.refuse_unauthenticated_cluster(address, None) is None


@pytest.mark.parametrize("address", ["127.0.0.1:6379", "localhost:6379", "ray://127.0.0.1:10001"])
def test_disabled_auth_is_allowed_on_a_loopback_only_cluster(address, loopback_mode):
    assert C.ray_address_host(address) in ("127.0.0.1", "localhost")
    assert C.refuse_unauthenticated_cluster(address, "disabled") is None


def test_127_0_0_1_is_not_loopback_where_ray_does_not_keep_it():
    """On Linux Ray connects to 127.0.0.1:PORT at this machine's routable address (its clusters listen on
    every interface): RAY_AUTH_MODE=disabled is refused there too."""
    ray_constants, services = compat.ray_constants(), compat.ray_services()
    if not ray_constants.ENABLE_RAY_CLUSTER:
        pytest.skip("Ray's loopback-only mode is on in this process")
    routable = services.get_node_ip_address()
    assert C.ray_address_host("127.0.0.1:6379") == routable
    if routable != "127.0.0.1":
        assert C.refuse_unauthenticated_cluster("127.0.0.1:6379", "disabled")


def test_auto_address_is_resolved_before_deciding(monkeypatch, tmp_path):
    """`--address auto` is where `ray.init` would connect: the last `ray start` here (its address file), else
    a GCS process found running; none: cannot tell, refused."""
    services = compat.ray_services()
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: set())      # not this machine's other Rays
    (tmp_path / "ray").mkdir()
    assert C.ray_address_host("auto") is None
    assert C.refuse_unauthenticated_cluster("auto", "disabled")
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.0.3.7:6379")
    assert C.ray_address_host("auto") == "10.0.3.7"
    assert C.refuse_unauthenticated_cluster("auto", "disabled")


def test_the_driver_refuses_before_ray_starts(monkeypatch):
    """`_init_ray` raises the driver's UsageError (main: `error: ...`, exit 2) before `ray.init`."""
    import ray
    from sweeps.plan import UsageError, parse_options
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setattr(ray, "init", lambda *a, **k: (_ for _ in ()).throw(AssertionError("Ray must not start")))
    if ray.is_initialized():
        ray.shutdown()
    says = r"RAY_AUTH_MODE=disabled for the Ray cluster at 10\.0\.3\.7.*RAY_AUTH_MODE=token"
    with pytest.raises(UsageError, match=says):
        full_grid._init_ray(parse_options(["--preset", "quick", "--address", "10.0.3.7:6379"]))


def test_no_doc_suggests_disabling_auth():
    """Neither the driver's docstring nor the cluster docs tell anyone to switch token auth off."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    for path in [root / "sweeps" / "full_grid.py", root / "docs" / "cluster.md", root / "cluster.yaml"]:
        text = " ".join(path.read_text().split())
        for m in re.finditer("RAY_AUTH_MODE=disabled", text):
            before = text[max(0, m.start() - 80):m.start()]
            assert "refuse" in before or "never" in before, f"{path.name}: ...{before}RAY_AUTH_MODE=disabled"
