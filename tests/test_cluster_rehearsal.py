"""scripts/rehearse_cluster.sh, `ray up` for real on this machine (docs/cluster_rehearsal.md).

The rehearsal itself takes ~20 minutes on 2 cores (30 on a busy machine) and needs root (it adds a user, an sshd on
127.0.0.1:22 and /shared): it is not part of the suite (`sudo bash scripts/rehearse_cluster.sh` runs it,
exit 0 = passed); the tests here check, in seconds, what it relies on: its servers bind loopback only, it never runs `ray stop` as root or kills
by name, its local-provider config is the rendered AWS one with only the provider swapped, and its log
summary.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from sweeps import cluster as C

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "rehearse_cluster.sh"
CHECKS = REPO / "scripts" / "rehearsal_checks.py"


def _code(path: Path) -> str:
    """The script without its comment lines."""
    return "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))


def test_the_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_its_servers_bind_loopback_and_its_sshd_is_its_own():
    text = SCRIPT.read_text()
    assert re.search(r"^HEAD_IP=127\.0\.0\.1$", text, re.M)
    start = text.index('cat > "$R/sshd/sshd_config"')
    sshd = text[start:text.index("\nEOF\n", start)]
    assert "ListenAddress 127.0.0.1:22" in sshd and "PasswordAuthentication no" in sshd
    assert "PermitRootLogin no" in sshd and "AllowUsers $NODE_USER" in sshd and "PermitOpen 127.0.0.1:5000" in sshd
    # the node's bind address and Ray's loopback mode come from its sessions' environment, not edited commands
    assert "SetEnv IMBALANCE_NODE_IP=$HEAD_IP RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_TMPDIR=" in sshd
    # a separate config file and PID file: the machine's own sshd config is never touched
    assert '/usr/sbin/sshd -f "$R/sshd/sshd_config"' in text and "/etc/ssh/sshd_config" not in _code(SCRIPT)
    # the SSH tunnel listens on loopback
    assert '-L "127.0.0.1:$TUNNEL_PORT:$HEAD_IP:5000"' in text


def test_it_stops_only_what_it_started():
    code = _code(SCRIPT)
    assert not re.search(r"\bpkill\b|\bkillall\b", code)
    # `ray stop` runs only inside the node's commands (as ubuntu, via ray up/down), never from this script
    assert not re.search(r"\$RAY\"? stop|\bray stop\b", code)
    assert "kill -TERM $pids" in code and 'ps -u "$NODE_USER" -o pid=' in code      # the node user's, by PID
    assert "trap '[ \"$KEEP\" = 1 ] || teardown' EXIT" in code


def test_its_config_is_the_rendered_one_with_the_provider_swapped(tmp_path, monkeypatch):
    env = {"IMBALANCE_REPO_URL": "/tmp/x/repo.git", "IMBALANCE_NFS_SERVER": "efs.rehearsal.invalid",
           "IMBALANCE_GPU_IMAGE_ID": "ami-00000000000000000", "IMBALANCE_HEAD_IMAGE_ID": "ami-00000000000000000",
           "IMBALANCE_SUBNET_IDS": "subnet-00000000000000000", "IMBALANCE_SECURITY_GROUP_ID": "sg-00000000000000000",
           "IMBALANCE_HEAD_INSTANCE_PROFILE_ARN": "arn:aws:iam::000000000000:instance-profile/rehearsal",
           "IMBALANCE_VPC_CIDR": "127.0.0.0/8"}
    aws = tmp_path / "my-cluster.yaml"
    aws.write_text(C.render((REPO / "cluster.yaml").read_text(), env))
    local = tmp_path / "local.yaml"
    assert C.main(["local", str(aws), "--head-ip", "127.0.0.1", "--ssh-key", "/k", "-o", str(local)]) == 0
    run = lambda a, b: subprocess.run([sys.executable, str(CHECKS), "same-config", str(a), str(b)],  # noqa: E731
                                      capture_output=True, text=True)
    proc = run(aws, local)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    changed = yaml.safe_load(local.read_text())
    changed["head_setup_commands"] = changed["head_setup_commands"][:-1]
    local.write_text(yaml.safe_dump(changed))
    proc = run(aws, local)
    assert proc.returncode == 1 and "DIFFERENT: ['head_setup_commands']" in proc.stdout


def test_the_log_summary(tmp_path):
    log = tmp_path / "ray-up-1.log"
    log.write_text("100.0 Cluster: imbalance-sweeps\n100.5 [1/7] Waiting for SSH to become available\n"
                   "103.0 [2/7] Processing file mounts\n104.0 [6/7] Running setup commands\n"
                   "400.0     (1/7) sudo apt-get ...\n500.0 [7/7] Starting the Ray runtime\n"
                   "545.0 [mlflow_server] http://127.0.0.1:5000 up (pid 9, 41 s); log x\n"
                   "546.0 [mlflow_backup] dumping mlflow to /shared/mlflow/backup every 300 s\n"
                   "554.0 Ray runtime started.\n560.0 done\n")
    steps = subprocess.run([sys.executable, str(CHECKS), "ray-steps", str(log), "ray up #1"],
                           capture_output=True, text=True, check=True).stdout
    assert steps.splitlines() == ["ray up #1: [1/7] Waiting for SSH to become available\t2\tok\t",
                                  "ray up #1: [2/7] Processing file mounts\t1\tok\t",
                                  "ray up #1: [6/7] Running setup commands\t396\tok\t",
                                  "ray up #1:   (1/7) sudo apt-get ...\t100\tok\t",
                                  "ray up #1: [7/7] Starting the Ray runtime\t60\tok\t",
                                  "ray up #1:   MLflow server start (scripts/mlflow_server.sh restart)\t41\tok\t",
                                  "ray up #1:   ray start --head\t8\tok\t"]
    phases = tmp_path / "phases.tsv"
    phases.write_text("prepare\t5\tok\tsshd\nray up #1 (a new head)\t460\tok\t\n" + steps)
    out = subprocess.run([sys.executable, str(CHECKS), "summary", str(phases)], capture_output=True, text=True,
                         check=True).stdout
    assert "| ray up #1 (a new head) | 7 min 40 s | ok |  |" in out
    assert "| &nbsp;&nbsp;&nbsp;ray up #1: [6/7] Running setup commands | 6 min 36 s | ok |  |" in out
    assert out.strip().endswith("wall time 7 min 45 s")
