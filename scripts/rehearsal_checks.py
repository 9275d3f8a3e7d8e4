"""The checks and the summary of scripts/rehearse_cluster.sh (run on the rehearsal's launcher side, with the
project's Python). Each subcommand prints what it found and exits 1 when the check fails.

    python scripts/rehearsal_checks.py listeners --users ubuntu,postgres [--require PORT ...]
    python scripts/rehearsal_checks.py runs --uri http://127.0.0.1:15000 --experiment buda-quick --expect 30 \
        --save runs.json [--same-as earlier.json]
    python scripts/rehearsal_checks.py same-config AWS.yaml LOCAL.yaml
    python scripts/rehearsal_checks.py ray-steps RAY_UP_LOG LABEL >> phases.tsv
    python scripts/rehearsal_checks.py summary phases.tsv
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import pwd
import re
import sys
from pathlib import Path


# --------------------------------------------------------------------------- listening sockets

def _listening() -> dict[int, tuple[str, int]]:
    out = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A":
                continue
            addr_hex, port_hex = f[1].split(":")
            raw = bytes.fromhex(addr_hex)
            if v6:
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                addr = ipaddress.IPv6Address(raw)
                addr = addr.ipv4_mapped or addr
            else:
                addr = ipaddress.IPv4Address(raw[::-1])
            out[int(f[9])] = (str(addr), int(port_hex, 16))
    return out


def listeners(uids: set[int], pids: set[int] = frozenset()) -> list[tuple[str, int, int, str, str]]:
    """(address, port, pid, user, program) of every TCP listener of a process owned by one of `uids`, or
    one of `pids` (the rehearsal's sshd, which runs as root)."""
    table = _listening()
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        pid = int(p)
        try:
            st = os.stat(f"/proc/{pid}")
            if st.st_uid not in uids and pid not in pids:
                continue
            argv0 = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode(errors="replace")
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        prog = argv0.split()[0] if argv0.startswith("ray::") else os.path.basename(argv0)
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in table:
                addr, port = table[int(target[8:-1])]
                found.append((addr, port, pid, pwd.getpwuid(st.st_uid).pw_name, prog))
    return sorted(set(found), key=lambda r: (r[3], r[4], r[1]))


def cmd_listeners(args) -> int:
    uids = {pwd.getpwnam(u).pw_uid for u in args.users.split(",")}
    rows = listeners(uids, {int(p) for p in args.pids.split(",") if p.strip()})
    bad = [r for r in rows if not ipaddress.ip_address(r[0]).is_loopback]
    for addr, port, pid, user, prog in rows:
        print(f"  {addr}:{port:<6} {user:<8} {pid:<7} {prog}" + ("   <-- NOT LOOPBACK" if (addr, port, pid, user, prog)
                                                                   in bad else ""))
    ports = {r[1] for r in rows}
    missing = [p for p in args.require if p not in ports]
    who = args.users + (f" and pids {args.pids}" if args.pids else "")
    print(f"{len(rows)} listeners of {who}: {len(bad)} off loopback" +
          (f"; expected ports not listening: {missing}" if missing else ""))
    return 1 if bad or missing else 0


# --------------------------------------------------------------------------- MLflow, through the server's API

def cmd_runs(args) -> int:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=args.uri)
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        print(f"no experiment {args.experiment} at {args.uri}")
        return 1
    runs = client.search_runs([exp.experiment_id], max_results=10000)
    keys = [r.data.tags.get("trial_key") for r in runs]
    status = {}
    for r in runs:
        status[r.info.status] = status.get(r.info.status, 0) + 1
    ids = {r.data.tags.get("trial_key"): r.info.run_id for r in runs}
    ok = True
    print(f"{args.uri} experiment {args.experiment}: {len(runs)} runs {status}, {len(set(keys))} distinct networks")
    if None in keys:
        print("  a run without its trial_key tag")
        ok = False
    if len(keys) != len(set(keys)):
        print(f"  a network logged more than once: {len(keys) - len(set(keys))} duplicates")
        ok = False
    if args.expect is not None and len(runs) != args.expect:
        print(f"  expected {args.expect} runs")
        ok = False
    if status.get("FINISHED", 0) != len(runs):
        print("  not every run FINISHED")
        ok = False
    if args.same_as:
        before = json.loads(Path(args.same_as).read_text())
        same = sum(1 for k, v in ids.items() if before.get(k) == v)
        print(f"  same run ids as {args.same_as}: {same} of {len(before)}; new runs: "
              f"{sorted(set(ids.values()) - set(before.values()))[:5]}")
        if ids != before:
            ok = False
    if args.save:
        Path(args.save).write_text(json.dumps(ids, indent=1, sort_keys=True))
    return 0 if ok else 1


# --------------------------------------------------------------------------- the local config is the AWS one

def cmd_same_config(args) -> int:
    import yaml
    aws = yaml.safe_load(Path(args.aws).read_text())
    local = yaml.safe_load(Path(args.local).read_text())
    swapped = {"provider", "available_node_types", "head_node_type"}
    diff = []
    for key in sorted(set(aws) | set(local)):
        if key in swapped:
            continue
        a, b = aws.get(key), local.get(key)
        if key == "auth":                   # the local provider needs the key AWS would make itself
            b = {k: v for k, v in (b or {}).items() if k != "ssh_private_key"}
        if a != b:
            diff.append(key)
    kept = [k for k in aws if k not in swapped]
    print(f"{args.local}: {len(kept)} settings as in {args.aws} (every command list and file mount); swapped: "
          f"provider {local['provider']}, node types -> Ray's local.cluster.node; auth + ssh_private_key" +
          (f"; DIFFERENT: {diff}" if diff else ""))
    return 1 if diff else 0


# --------------------------------------------------------------------------- the log, summarised

_STEP = re.compile(r"^(\d+\.\d+) .*?\[(\d+)/(\d+)\] (.+?)\s*$")
_COMMAND = re.compile(r"^(\d+\.\d+) +\((\d+)/(\d+)\) (.+?)\s*$")          # a setup command: "(2/7) git cl..."
_MLFLOW_UP = re.compile(r"^(\d+\.\d+) \[mlflow_server\] http://\S+ up \(pid \d+, (\d+) s\)")
_BACKUP_UP = re.compile(r"^(\d+\.\d+) \[mlflow_backup\] dumping")
_RAY_UP = re.compile(r"^(\d+\.\d+) .*Ray runtime started\.")


def cmd_ray_steps(args) -> int:
    """Ray's launcher steps ([1/7] Waiting for SSH ... [7/7] Starting the Ray runtime) in a timestamped
    `ray up` log, as phase rows (label, seconds, status, note); under [6/7] each setup command
    ("(k/n) its first characters"), under [7/7] the MLflow server's start and `ray start --head`."""
    lines = Path(args.log).read_text(errors="replace").splitlines()
    steps, commands, last_t = [], [], None
    mlflow_s = backup_t = ray_t = None
    for line in lines:
        if m := _STEP.match(line):
            steps.append((float(m.group(1)), f"[{m.group(2)}/{m.group(3)}] {m.group(4)}"))
        elif m := _COMMAND.match(line):
            commands.append((float(m.group(1)), f"({m.group(2)}/{m.group(3)}) {m.group(4)}"))
        if m := _MLFLOW_UP.match(line):
            mlflow_s = int(m.group(2))
        if m := _BACKUP_UP.match(line):
            backup_t = float(m.group(1))
        if m := _RAY_UP.match(line):
            ray_t = float(m.group(1))
        try:
            last_t = float(line.split(" ", 1)[0])
        except ValueError:
            pass
    for i, (t, name) in enumerate(steps):
        end = steps[i + 1][0] if i + 1 < len(steps) else last_t
        print(f"{args.label}: {name}\t{end - t:.0f}\tok\t")
        inside = [(ct, cn) for ct, cn in commands if t <= ct < end]
        for j, (ct, cn) in enumerate(inside):
            cend = inside[j + 1][0] if j + 1 < len(inside) else end
            print(f"{args.label}:   {cn}\t{cend - ct:.0f}\tok\t")
        if name.startswith("[7/"):
            if mlflow_s is not None:
                print(f"{args.label}:   MLflow server start (scripts/mlflow_server.sh restart)\t{mlflow_s}\tok\t")
            if backup_t is not None and ray_t is not None:
                print(f"{args.label}:   ray start --head\t{ray_t - backup_t:.0f}\tok\t")
    return 0


def cmd_summary(args) -> int:
    rows = [ln.split("\t") for ln in Path(args.phases).read_text().splitlines() if ln.strip()]
    total = sum(float(r[1]) for r in rows if not r[0].startswith(("ray up #1: ", "ray up #2: ")))
    print("| phase | time | result | notes |")
    print("|---|---|---|---|")
    for name, secs, status, *note in rows:
        s = float(secs)
        t = f"{int(s // 60)} min {int(s % 60):02d} s" if s >= 60 else f"{s:.0f} s"
        indent = "&nbsp;&nbsp;&nbsp;" if name.startswith(("ray up #1: ", "ray up #2: ")) else ""
        print(f"| {indent}{name} | {t} | {status} | {(note[0] if note else '').strip()} |")
    print(f"\nwall time {int(total // 60)} min {int(total % 60):02d} s")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/rehearsal_checks.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("listeners")
    p.add_argument("--users", required=True)
    p.add_argument("--pids", default="", help="comma-separated pids whose listeners count too")
    p.add_argument("--require", type=int, nargs="*", default=[])
    p = sub.add_parser("runs")
    p.add_argument("--uri", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--expect", type=int)
    p.add_argument("--save")
    p.add_argument("--same-as")
    p = sub.add_parser("same-config")
    p.add_argument("aws")
    p.add_argument("local")
    p = sub.add_parser("ray-steps")
    p.add_argument("log")
    p.add_argument("label")
    p = sub.add_parser("summary")
    p.add_argument("phases")
    args = ap.parse_args(argv)
    return {"listeners": cmd_listeners, "runs": cmd_runs, "same-config": cmd_same_config,
            "ray-steps": cmd_ray_steps, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
