"""cluster.yaml and the cluster machinery (sweeps/cluster.py; the test harness: tests/cluster_harness.py).

a) cluster.yaml: Ray's own schema check, no credentials, GPU types scale from zero, MLflow bound to
   the node's address (private, or the rehearsal's loopback) behind basic auth, token auth, shared storage;
   issue 24's blockers: set-up without PostgreSQL on a non-head node, /shared/data the user's, validate on a
   rendered file (a commit sha is no secret, a token is), a missing file mount named with its command,
   MLflow's database dumped to /shared and restored on a new head, subnets / security group / instance
   profile rendered in, MLflow's allowed hosts from the VPC's range, secrets on the head only, the head's
   IAM policy scoped to its autoscaler; the rehearsal's local-provider config.
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

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from sweeps import cluster as C
from sweeps import compat
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


def test_cluster_yaml_passes_ray_schema(cfg, capsys):
    prepared = C.validate(cfg)                 # prepare_config + ray-schema.json + validate_config
    assert prepared["head_node_type"] == "head"
    # the shipped file is Ray-valid but not launchable: validate says which placeholders are left
    assert C.main(["validate", str(CLUSTER_YAML)]) == 1
    err = capsys.readouterr().err
    assert "placeholders to fill before `ray up`" in err and "IMBALANCE_SUBNET_IDS" in err


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


NODE_IP = re.compile(r"\b(\w+)=\"\$\{IMBALANCE_NODE_IP:-\$\(hostname -I \| awk '\{print \$1\}'\)\}\"")


def test_mlflow_server_binds_the_nodes_address(cfg):
    # scripts/mlflow_server.sh runs `mlflow server --host $MLFLOW_HOST --port $MLFLOW_PORT
    # --backend-store-uri $MLFLOW_BACKEND_URI --artifacts-destination $MLFLOW_ARTIFACTS` (tests/test_postgres.py)
    cmd = _mlflow_command(cfg)
    host = re.search(r"MLFLOW_HOST=(\S+)", cmd).group(1).strip('"\'')
    assert host not in ("0.0.0.0", "::", "[::]", "*")
    m = NODE_IP.search(cmd)
    assert m and host == f"${m.group(1)}", \
        "--host is $IMBALANCE_NODE_IP (the rehearsal's 127.0.0.1), else the node's private address (hostname -I)"
    assert "MLFLOW_PORT=5000" in cmd and cmd.rstrip().endswith("mlflow_server.sh restart")
    assert "MLFLOW_BACKEND_URI=postgresql://mlflow@127.0.0.1:5432/mlflow" in cmd     # password: ~/.pgpass
    assert "MLFLOW_ARTIFACTS=/shared/mlflow/artifacts" in cmd
    # behind MLflow's basic-auth app (login made on the head), admitting the VPC's range only
    assert "MLFLOW_AUTH_CREDENTIALS=~/.mlflow/credentials" in cmd
    assert f"MLFLOW_ALLOWED_CIDRS={C.PLACEHOLDERS['IMBALANCE_VPC_CIDR']}" in cmd
    setup = "\n".join(cfg["head_setup_commands"])
    assert "postgresql" in setup and "mlflow[auth]==" in setup
    assert ("scripts/mlflow_db.sh --server --create-password --restore-from /shared/mlflow/backup "
            "~/.mlflow-db-password.txt") in setup
    # MLflow comes up before Ray, and its database is dumped to /shared from then on
    start = cfg["head_start_ray_commands"]
    ray_start = next(i for i, c in enumerate(start) if "ray start --head" in c)
    backup = next(i for i, c in enumerate(start) if "scripts/mlflow_backup.sh restart" in c)
    assert start.index(cmd) < backup < ray_start
    assert "MLFLOW_BACKUP_DIR=/shared/mlflow/backup" in start[backup]


def test_every_server_binds_the_nodes_address(cfg):
    """Ray, on the head and the workers, gets --node-ip-address from the same variable as MLflow (the
    rehearsal sets it to 127.0.0.1; on AWS it is the private address)."""
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in cfg[key] if "ray start" in c)
        m = NODE_IP.search(start)
        assert m and f'--node-ip-address="${m.group(1)}"' in start, key


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
    compat.validate_cluster_config(fake)
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
# a2) issue 24: what `ray up` for real found, each fixed
# ---------------------------------------------------------------------------------------------

FULL_ENV = {"IMBALANCE_REPO_URL": "https://example.org/r.git",
            "IMBALANCE_NFS_SERVER": "fs-0123abcd.efs.us-west-2.amazonaws.com",
            "IMBALANCE_GPU_IMAGE_ID": "ami-0123456789abcdef0", "IMBALANCE_HEAD_IMAGE_ID": "ami-0fedcba9876543210",
            "IMBALANCE_SUBNET_IDS": "subnet-0a1b2c3d4e5f60718,subnet-0b1b2c3d4e5f60719",
            "IMBALANCE_SECURITY_GROUP_ID": "sg-0123456789abcdef0",
            "IMBALANCE_HEAD_INSTANCE_PROFILE_ARN": "arn:aws:iam::123456789012:instance-profile/imbalance-sweeps-head",
            "IMBALANCE_VPC_CIDR": "172.31.0.0/16"}


@pytest.fixture
def rendered(tmp_path, monkeypatch) -> Path:
    """cluster.yaml rendered with every variable, and a HOME with the Ray token (what `ray up` needs)."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(os.urandom(32).hex())
    monkeypatch.setenv("HOME", str(home))
    for var, value in FULL_ENV.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("IMBALANCE_REPO_REF", raising=False)
    out = tmp_path / "my-cluster.yaml"
    assert C.main(["render", str(CLUSTER_YAML), "-o", str(out)]) == 0
    return out


def test_setup_on_a_node_needs_no_postgresql():
    """scripts/setup.sh as a non-root user on a machine without PostgreSQL (a GPU worker; the head before its
    head_setup_commands): exit 0 with a note. It used to exit 1 there (initdb missing, not root)."""
    import shutil
    import tempfile
    root = Path(tempfile.mkdtemp(prefix="setup_", dir="/tmp"))
    try:
        (root / "scripts").mkdir()
        shutil.copy(REPO / "scripts" / "setup.sh", root / "scripts" / "setup.sh")
        shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
        import hashlib
        stamp = hashlib.sha1((root / "pyproject.toml").read_bytes() + (root / "scripts" / "setup.sh").read_bytes())
        (root / ".venv").mkdir()
        (root / ".venv" / f".setup-{stamp.hexdigest()[:12]}").touch()     # the venv is there: only the checks run
        bindir = root / "bin"               # PATH without initdb (pkg-config, bash, ls, id: the system's)
        bindir.mkdir()
        for tool in ("bash", "pkg-config", "ls", "id", "dirname", "cat", "sha1sum", "cut"):
            (bindir / tool).symlink_to(shutil.which(tool))
        for p in [root, *root.rglob("*")]:
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() else 0o644)
        env = {"PATH": str(bindir), "POSTGRES_LIB": "/nonexistent", "HOME": str(root)}
        cmd = ["bash", str(root / "scripts" / "setup.sh")]
        if os.geteuid() == 0:                       # as a node's user: not root
            cmd = [shutil.which("runuser"), "-u", "nobody", "--", shutil.which("env"),
                   *[f"{k}={v}" for k, v in env.items()], *cmd]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "note: no PostgreSQL server binaries here; sweeps do not need them" in proc.stdout
        assert "apt-get install" not in proc.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_every_folder_made_under_shared_is_the_users(cfg):
    """/shared/data was made by root and left out of the chown: `ray rsync-up` of the data and the ImageNet
    extraction (as ubuntu) got 'Permission denied'."""
    cmd = next(c for c in cfg["setup_commands"] if "sudo mkdir -p /shared/" in c)
    made = set(re.search(r"sudo mkdir -p ((?:/shared/\S+ ?)+)", cmd).group(1).split())
    owned = set(re.search(r'sudo chown "\$\(id -u\):\$\(id -g\)" ((?:/shared/\S+\s*)+)', cmd).group(1).split())
    parents = {str(Path(p).parent) for p in made} - {"/shared"}
    assert "/shared/data" in made and made | parents <= owned, (made | parents) - owned


def test_validate_passes_a_rendered_file_and_still_catches_a_token(rendered, capsys):
    text = rendered.read_text()
    sha = C.pinned_commits(text)
    assert len(sha) == 1 and text.count(next(iter(sha))) >= 2           # the checkout and its check
    assert C.main(["validate", str(rendered)]) == 0, capsys.readouterr().err
    # a real token still fails, also one of hex digits only, and so does a sha other than the pinned one
    for leak in [f"# token: {os.urandom(32).hex()}", "# RAY_AUTH_TOKEN=abc", f"# key {os.urandom(20).hex()}"]:
        rendered.write_text(text + leak + "\n")
        assert C.main(["validate", str(rendered)]) == 1, leak
        assert "looks like it holds credentials" in capsys.readouterr().err
    # the rendered ARN, subnet and group ids are not credentials
    ids = FULL_ENV["IMBALANCE_HEAD_INSTANCE_PROFILE_ARN"] + " " + FULL_ENV["IMBALANCE_SUBNET_IDS"]
    assert C.find_secrets(ids) == []


def test_a_missing_file_mount_is_named_before_ray_up(rendered, monkeypatch, capsys, tmp_path):
    """Ray stops with an AssertionError traceback on a file mount whose local file is missing
    (updater.py); validate (and render) name it first, with the command that makes it."""
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    assert C.main(["validate", str(rendered)]) == 1
    err = capsys.readouterr().err
    assert "file mount ~/.ray/auth_token: ~/.ray/auth_token does not exist" in err
    assert "ray get-auth-token --generate" in err
    assert C.main(["render", str(CLUSTER_YAML), "-o", str(tmp_path / "again.yaml")]) == 0
    assert "before `ray up`: file mount ~/.ray/auth_token" in capsys.readouterr().err
    # the old config's password mount: named, with its command
    old = yaml.safe_load(rendered.read_text())
    old["file_mounts"]["~/.mlflow-db-password.txt"] = "~/.mlflow-db-password.txt"
    lines = C.missing_file_mounts(old)
    assert any("~/.mlflow-db-password.txt" in ln and "openssl rand -hex 24 > ~/.mlflow-db-password.txt" in ln
               for ln in lines), lines


def test_render_pins_the_network_and_the_heads_profile(rendered):
    cfg = yaml.safe_load(rendered.read_text())
    subnets = FULL_ENV["IMBALANCE_SUBNET_IDS"].split(",")
    for name, nt in cfg["available_node_types"].items():
        assert nt["node_config"]["SubnetIds"] == subnets, name
        assert nt["node_config"]["SecurityGroupIds"] == [FULL_ENV["IMBALANCE_SECURITY_GROUP_ID"]], name
    head = cfg["available_node_types"][cfg["head_node_type"]]["node_config"]
    assert head["IamInstanceProfile"] == {"Arn": FULL_ENV["IMBALANCE_HEAD_INSTANCE_PROFILE_ARN"]}
    assert all("IamInstanceProfile" not in nt["node_config"] for nt in C.worker_node_types(cfg).values())
    assert "MLFLOW_ALLOWED_CIDRS=172.31.0.0/16" in _mlflow_command(cfg)


@pytest.mark.parametrize("var, value, says", [
    ("IMBALANCE_SUBNET_IDS", "subnet-zz", "subnet ids"),
    ("IMBALANCE_SUBNET_IDS", "subnet-0a1b2c3d4e5f60718 subnet-0b1b2c3d4e5f60719", "subnet ids"),
    ("IMBALANCE_SECURITY_GROUP_ID", "ray-autoscaler-imbalance-sweeps", "security group id"),
    ("IMBALANCE_HEAD_INSTANCE_PROFILE_ARN", "imbalance-sweeps-head", "instance profile ARN"),
    ("IMBALANCE_VPC_CIDR", "52.10.0.0/16", "not a VPC's private range"),
    ("IMBALANCE_VPC_CIDR", "172.31.0.0/33", "not an IPv4 range"),
])
def test_render_refuses_malformed_network_values(var, value, says):
    with pytest.raises(ValueError, match=says):
        C.render(CLUSTER_YAML.read_text(), {**FULL_ENV, var: value})


def test_mlflows_allowed_hosts_are_the_vpcs_addresses():
    """MLflow's own matcher on the patterns: the VPC's addresses at port 5000 and localhost (a tunnel); not
    another range, not a DNS name that starts like one (what MLflow's default `172.31.*`-style admits)."""
    from mlflow.server.security_utils import is_allowed_host_header as allowed
    for cidr, inside, outside in [
        ("172.31.0.0/16", ["172.31.0.4:5000", "172.31.255.254:5000"], ["172.32.0.4:5000", "10.0.0.1:5000"]),
        ("10.0.0.0/20", ["10.0.15.3:5000", "10.0.0.1:5000"], ["10.0.16.3:5000"]),
        ("10.20.30.0/24", ["10.20.30.7:5000"], ["10.20.31.7:5000"]),
    ]:
        hosts = C.allowed_hosts(cidr)
        for h in inside + ["localhost:5000", "127.0.0.1:5000"]:
            assert allowed(hosts, h), (cidr, h)
        names = [f"{cidr.split('.')[0]}.attacker.example:5000", f"{inside[0].split(':')[0]}.evil.example:5000"]
        for h in outside + names + [inside[0].replace(":5000", ":5001")]:
            assert not allowed(hosts, h), (cidr, h)
    assert C.main(["allowed-hosts", "52.0.0.0/8"]) == 2


def test_secrets_stay_on_the_head(cfg):
    """Only the Ray token is a file mount (every node needs it; the head's autoscaler copies every mount on
    to the workers). The database password and MLflow's login are made on the head (mode 600)."""
    assert list(cfg["file_mounts"]) == ["~/.ray/auth_token"]
    db = (REPO / "scripts" / "mlflow_db.sh").read_text()
    assert "--create-password" in db and "umask 077" in db
    server = (REPO / "scripts" / "mlflow_server.sh").read_text()
    assert "MLFLOW_AUTH_CREDENTIALS" in server and "--app-name basic-auth" in server
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in server and "--admin-password" not in server   # env, not argv
    text = CLUSTER_YAML.read_text()
    assert "worker_setup_commands: []" in text and "mlflow-db-password" not in "\n".join(cfg["setup_commands"])


def test_the_heads_instance_profile_is_scoped_to_its_autoscaler(rendered):
    policy = C.head_policy(yaml.safe_load(rendered.read_text()))
    as_list = lambda a: [a] if isinstance(a, str) else a      # noqa: E731
    actions = {a for st in policy["Statement"] for a in as_list(st["Action"])}
    assert actions <= {"ec2:DescribeInstances", "ec2:DescribeInstanceTypes", "ec2:DescribeImages",
                       "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeKeyPairs",
                       "ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances"}, actions
    assert not any("*" in a for a in actions) and not any(a.startswith(("s3:", "iam:")) for a in actions)
    for st in policy["Statement"]:
        if "ec2:TerminateInstances" in as_list(st["Action"]):
            assert st["Condition"] == {"StringEquals": {"aws:ResourceTag/ray-cluster-name": "imbalance-sweeps"}}
    text = json.dumps(policy)
    for sid in FULL_ENV["IMBALANCE_SUBNET_IDS"].split(",") + [FULL_ENV["IMBALANCE_SECURITY_GROUP_ID"]]:
        assert sid in text
    assert C.main(["head-policy", str(CLUSTER_YAML)]) == 2          # not rendered: no policy


def test_the_rehearsals_config_swaps_only_the_provider(rendered):
    """Ray's local provider: only the provider and node types swapped (its one node type is Ray's own); every
    command list and file mount as rendered for AWS; Ray's own preparation accepts it."""
    aws = yaml.safe_load(rendered.read_text())
    local = C.local_provider_config(aws, "127.0.0.1", "/k/key")
    assert local["provider"] == {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    assert "available_node_types" not in local and "head_node_type" not in local
    assert local["auth"] == {**aws["auth"], "ssh_private_key": "/k/key"}
    for key in set(aws) - {"provider", "available_node_types", "head_node_type", "auth"}:
        assert local[key] == aws[key], key
    prepared = compat.prepare_cluster_config(local)
    compat.validate_cluster_config(prepared)
    assert list(prepared["available_node_types"]) == ["local.cluster.node"]


@pytest.mark.slow
def test_mlflows_database_survives_a_lost_head(tmp_path):
    """scripts/mlflow_backup.sh dumps the database to the shared folder (`now`, and its loop only when the
    database changed); on a new head's empty database scripts/mlflow_db.sh --restore-from brings it back,
    and leaves a database that has tables alone. A throwaway PostgreSQL (tests/test_postgres.py's)."""
    import time as _time
    from test_postgres import Postgres
    pg = Postgres()
    pg.start()
    try:
        env = {**os.environ, "MLFLOW_DB_PORT": str(pg.port), "PGPASSFILE": str(pg.pgpass), "HOME": str(tmp_path),
               "MLFLOW_BACKUP_DIR": str(tmp_path / "shared"), "MLFLOW_BACKUP_INTERVAL_S": "1",
               "PSQL_ADMIN": " ".join(["runuser", "-u", "postgres", "--"] * (os.geteuid() == 0) +
                                      [str(pg.bin / "psql"), "-h", str(pg.dir), "-p", str(pg.port), "-U", "postgres"])}

        def sql(q, admin=False):
            cmd = (env["PSQL_ADMIN"].split() + ["-d", "postgres"]) if admin else \
                ["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "mlflow", "-d", "mlflow"]
            return subprocess.run(cmd + ["-tAq", "-v", "ON_ERROR_STOP=1", "-c", q], env=env, check=True,
                                  capture_output=True, text=True).stdout.strip()

        def script(*args):
            return subprocess.run(["bash", *map(str, args)], env=env, capture_output=True, text=True, timeout=120)

        # a UTF-8 database whatever the cluster's locale (psycopg 3 returns an SQL_ASCII one's text as bytes)
        encoding = "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = 'mlflow'"
        assert sql(encoding, admin=True) == "UTF8"
        sql("CREATE TABLE runs (run_uuid text PRIMARY KEY); "
            "INSERT INTO runs SELECT 'r' || i FROM generate_series(1, 30) i")
        out = script(REPO / "scripts" / "mlflow_backup.sh", "now")
        assert out.returncode == 0 and "dumped mlflow to" in out.stdout, out.stderr
        # the loop: a first dump, none while nothing changes, another after a change
        dump = tmp_path / "shared" / "mlflow.dump"
        t_first = dump.stat().st_mtime
        assert script(REPO / "scripts" / "mlflow_backup.sh", "start").returncode == 0
        try:
            deadline = _time.monotonic() + 20
            while dump.stat().st_mtime == t_first and _time.monotonic() < deadline:
                _time.sleep(0.2)
            t_loop = dump.stat().st_mtime
            assert t_loop > t_first, "the loop's first dump"
            _time.sleep(3)
            assert dump.stat().st_mtime == t_loop, "no dump while nothing changed"
            sql("INSERT INTO runs VALUES ('r31')")
            while dump.stat().st_mtime == t_loop and _time.monotonic() < deadline + 10:
                _time.sleep(0.2)
            assert dump.stat().st_mtime > t_loop, "a dump after a change"
        finally:
            assert script(REPO / "scripts" / "mlflow_backup.sh", "stop").returncode == 0
        assert (tmp_path / "shared" / "mlflow.dump.1").exists()
        # the head lost: a new, empty database; the set-up restores the newest dump
        sql("DROP DATABASE mlflow", admin=True)
        out = script(REPO / "scripts" / "mlflow_db.sh", "--restore-from", tmp_path / "shared", pg.password_file)
        assert out.returncode == 0, out.stderr
        assert "restored" in out.stdout and ": 31 runs" in out.stdout, out.stdout
        assert sql("SELECT count(*) FROM runs") == "31"
        out = script(REPO / "scripts" / "mlflow_db.sh", "--restore-from", tmp_path / "shared", pg.password_file)
        assert "nothing restored" in out.stdout and sql("SELECT count(*) FROM runs") == "31"
    finally:
        pg.stop()


# ---------------------------------------------------------------------------------------------
# helpers for the cluster tests
# ---------------------------------------------------------------------------------------------

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
        # 8 networks in 8 trials: after the kill, trials are still waiting for a GPU node, so the autoscaler
        # has demand to replace it (with 4, CI's sweep finished in 11 s on the one node left, and no
        # replacement came)
        rc = run_sweep(c.address, store, "nodeloss", repetitions=4, gpus=1, max_failures=3)
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
    assert_each_network_once(store, "nodeloss", len(expected_networks(4)))
