"""The cluster config (cluster.yaml) as code: load, validate with Ray's own schema, render its
placeholders, and what Ray's AWS autoscaler would do with its node types.

    python -m sweeps.cluster render [cluster.yaml] -o my-cluster.yaml   # fill placeholders from env, pin the commit
    python -m sweeps.cluster validate my-cluster.yaml     # ready for `ray up`? schema, credentials, file mounts
    python -m sweeps.cluster head-policy my-cluster.yaml  # the head's IAM policy (what its autoscaler does)
    python -m sweeps.cluster allowed-hosts 172.31.0.0/16  # MLflow's --allowed-hosts for a VPC's range
    python -m sweeps.cluster local my-cluster.yaml --head-ip 127.0.0.1 --ssh-key KEY -o local.yaml  # rehearsal
    python -m sweeps.cluster gpu-smoke [--address auto]   # on the head: CUDA really used on a GPU node?

`aws_node_types` / `autoscaler_launches` run Ray's own AWS resource filling and v1 node choice on
cluster.yaml's node types (which types `ray up`'s autoscaler would start for N pending trials).

`local_provider_config` is the rendered file with only its provider and node types swapped for Ray's
`local` provider (every command list and file mount kept): what scripts/rehearse_cluster.sh runs `ray up` on.
`ray_address_host` / `refuse_unauthenticated_cluster` are the driver's check of a cluster without token auth.

Running cluster.yaml's node types as a local autoscaling cluster on Ray's fake multi-node provider
(`fake_provider_config`, `LocalCluster`) is test harness: tests/cluster_harness.py.
"""
from __future__ import annotations

import argparse
import copy
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLUSTER_YAML = REPO_ROOT / "cluster.yaml"

# Placeholders in cluster.yaml that `render` fills from the environment (each must be filled for `ray up`;
# IMBALANCE_REPO_REF defaults to this checkout's HEAD, always written as a full commit sha).
PLACEHOLDERS = {
    "IMBALANCE_REPO_URL": "https://github.com/YOUR-ORG/imbalance-sweeps.git",
    "IMBALANCE_REPO_REF": "COMMIT-SHA-TO-RUN",
    "IMBALANCE_NFS_SERVER": "fs-XXXXXXXX.efs.us-west-2.amazonaws.com",
    "IMBALANCE_GPU_IMAGE_ID": "ami-GPU-IMAGE-OF-YOUR-REGION",
    "IMBALANCE_HEAD_IMAGE_ID": "ami-HEAD-IMAGE-OF-YOUR-REGION",
    # Where the nodes go and what they may do (docs/cluster.md, steps 3, 6 and 7). Without SubnetIds Ray takes the
    # first subnets it finds in the listed zones, possibly in a VPC where EFS is unreachable; without
    # SecurityGroupIds it makes a group open to SSH from anywhere; without an instance profile it creates one
    # with EC2 and S3 full access.
    "IMBALANCE_SUBNET_IDS": "subnet-IDS-OF-YOUR-EFS-SUBNETS",
    "IMBALANCE_SECURITY_GROUP_ID": "sg-ID-OF-YOUR-CLUSTER-GROUP",
    "IMBALANCE_HEAD_INSTANCE_PROFILE_ARN": "arn:aws:iam::ACCOUNT-ID:instance-profile/HEAD-PROFILE-NAME",
    "IMBALANCE_VPC_CIDR": "VPC-CIDR-OF-YOUR-SUBNETS",
}
# What each value must look like (render refuses anything else, before `ray up` fails on it).
_FORMATS = {
    "IMBALANCE_SUBNET_IDS": (r"subnet-[0-9a-f]{8,17}(\s*,\s*subnet-[0-9a-f]{8,17})*",
                             "subnet ids separated by commas, e.g. subnet-0a1b2c3d,subnet-4e5f6a7b"),
    "IMBALANCE_SECURITY_GROUP_ID": (r"sg-[0-9a-f]{8,17}", "one security group id, e.g. sg-0123abcd"),
    "IMBALANCE_HEAD_INSTANCE_PROFILE_ARN": (r"arn:aws[a-z-]*:iam::\d{12}:instance-profile/[\w+=,.@/-]+",
                                            "an instance profile ARN, arn:aws:iam::<account>:instance-profile/<name>"),
}
GPU_IMAGE_SSM = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"
HEAD_IMAGE_SSM = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"


# ---------------------------------------------------------------------------------------------
# cluster.yaml
# ---------------------------------------------------------------------------------------------

def load_cluster_yaml(path: str | os.PathLike = DEFAULT_CLUSTER_YAML) -> dict:
    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a cluster config must be a YAML mapping, got {type(config).__name__}")
    return config


def validate(config: dict) -> dict:
    """Ray's own check, as `ray up` does it: fill in the provider's defaults (`prepare_config`), then
    the JSON schema shipped in the wheel (ray/autoscaler/ray-schema.json) and Ray's consistency rules
    (`validate_config`). Returns the prepared config; raises jsonschema.ValidationError / ValueError."""
    from . import compat
    prepared = compat.prepare_cluster_config(config)
    compat.validate_cluster_config(prepared)
    return prepared


def worker_node_types(config: dict) -> dict[str, dict]:
    head = config["head_node_type"]
    return {name: nt for name, nt in config["available_node_types"].items() if name != head}


def commit_sha(ref: str = "HEAD", repo: str | os.PathLike = REPO_ROOT) -> str:
    """The full sha of `ref` in the repository (ValueError naming it if git cannot resolve it)."""
    proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                          capture_output=True, text=True)
    sha = proc.stdout.strip()
    if proc.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}", sha):
        raise ValueError(f"IMBALANCE_REPO_REF={ref!r} is not a commit of {repo}; give a branch, tag or sha "
                         f"that exists (and is pushed)")
    return sha


def render(text: str, env: dict[str, str] | None = None) -> str:
    """cluster.yaml's text with each placeholder replaced by its environment value, if set. The code
    version is always pinned: IMBALANCE_REPO_REF (default HEAD) becomes a full commit sha, so every
    node, also one that replaces a lost node later, checks out the same commit."""
    env = dict(os.environ if env is None else env)
    env["IMBALANCE_REPO_REF"] = commit_sha(env.get("IMBALANCE_REPO_REF") or "HEAD")
    for var, placeholder in PLACEHOLDERS.items():
        value = (env.get(var) or "").strip()
        if not value:
            continue
        if var in _FORMATS and not re.fullmatch(_FORMATS[var][0], value):
            raise ValueError(f"{var}={value!r} is not {_FORMATS[var][1]}")
        if var == "IMBALANCE_VPC_CIDR":
            value = str(vpc_network(value))
        if var == "IMBALANCE_SUBNET_IDS":
            value = ", ".join(v.strip() for v in value.split(","))
        text = text.replace(placeholder, value)
    return text


def vpc_network(cidr: str) -> ipaddress.IPv4Network:
    """A VPC's IPv4 range (ValueError unless it is a private or loopback range such as 172.31.0.0/16)."""
    try:
        net = ipaddress.IPv4Network(cidr.strip(), strict=False)
    except ValueError as e:
        raise ValueError(f"IMBALANCE_VPC_CIDR={cidr!r} is not an IPv4 range such as 172.31.0.0/16 ({e})") from None
    if not (net.is_private or net.is_loopback) or net.prefixlen < 8:
        raise ValueError(f"IMBALANCE_VPC_CIDR={cidr!r} is not a VPC's private range (RFC 1918, /8 or longer)")
    return net


def allowed_hosts(cidrs: str, port: int = 5000) -> list[str]:
    """MLflow's `--allowed-hosts` (Host-header patterns, fnmatch) for clients that reach it at an address in
    the given IPv4 ranges (comma-separated CIDRs) and `port`, plus localhost on any port (an SSH tunnel).
    The patterns match IPv4 addresses of the range only: an octet the range fixes is written out, a free one
    is one, two or three digits (`[0-9]`), so no DNS name matches (MLflow's default, `10.*` etc., also
    admits a name such as 10.attacker.example, the way a DNS-rebinding page would come in)."""
    patterns = ["localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*", "[::1]", "[[]::1]:*"]
    digits = ["[0-9]", "[0-9][0-9]", "[0-9][0-9][0-9]"]
    for cidr in [c for c in cidrs.split(",") if c.strip()]:
        net = vpc_network(cidr)
        fixed_octets = -(-net.prefixlen // 8)             # the octets the range fixes (a partial one enumerated)
        step = 2 ** (32 - 8 * fixed_octets)
        prefixes = sorted({".".join(str(ipaddress.IPv4Address(start)).split(".")[:fixed_octets])
                           for start in range(int(net.network_address), int(net.broadcast_address) + 1, step)},
                          key=lambda p: tuple(int(o) for o in p.split(".")))
        if len(prefixes) * len(digits) ** (4 - fixed_octets) > 1024:
            raise ValueError(f"{cidr}: too many host patterns; give the VPC's range (e.g. a /16)")
        tails = [""]
        for _ in range(4 - fixed_octets):
            tails = [t + "." + d for t in tails for d in digits]
        for prefix in prefixes:
            for tail in tails:
                # the trailing `*`: MLflow matches a pattern (fnmatch) only if it holds one; a URL's port is digits
                pattern = f"{prefix}{tail}:{int(port)}*"
                if pattern not in patterns:
                    patterns.append(pattern)
    return patterns


def placeholders_left(text: str) -> list[str]:
    """The environment variables whose placeholder is still in a cluster config's text."""
    return [var for var, placeholder in PLACEHOLDERS.items() if placeholder in text]


# ---------------------------------------------------------------------------------------------
# What Ray's autoscaler does with cluster.yaml on AWS (Ray's own functions, no cloud needed)
# ---------------------------------------------------------------------------------------------

# The fields of EC2's DescribeInstanceTypes that Ray's AWS provider reads
# (AWSNodeProvider.fillout_available_node_types_resources), from AWS's published instance specs.
EC2_INSTANCE_TYPES: dict[str, dict] = {
    "m6i.2xlarge": {"InstanceType": "m6i.2xlarge", "VCpuInfo": {"DefaultVCpus": 8}, "MemoryInfo": {"SizeInMiB": 32768}},
    **{f"g5.{size}": {"InstanceType": f"g5.{size}", "VCpuInfo": {"DefaultVCpus": cpus},
                      "MemoryInfo": {"SizeInMiB": mib},
                      "GpuInfo": {"Gpus": [{"Name": "A10G", "Manufacturer": "NVIDIA", "Count": gpus,
                                            "MemoryInfo": {"SizeInMiB": 22888}}]}}
       for size, cpus, mib, gpus in [("xlarge", 4, 16384, 1), ("2xlarge", 8, 32768, 1), ("4xlarge", 16, 65536, 1),
                                     ("12xlarge", 48, 196608, 4), ("48xlarge", 192, 786432, 8)]},
}


def aws_node_types(config: dict, instance_types: dict[str, dict] | None = None) -> dict[str, dict]:
    """cluster.yaml's node types with the resources Ray's AWS provider gives them at `ray up`
    (`_bootstrap_config` -> AWSNodeProvider.fillout_available_node_types_resources, Ray's own code run
    on `instance_types` instead of a DescribeInstanceTypes call): what you declare, plus `memory` (70%
    of a worker's RAM), the GPU count and `accelerator_type:<GPU name>` where you did not declare them.
    The AWS provider module imports boto3 (as `ray up` needs it too)."""
    from . import compat
    return compat.aws_node_resources(config, EC2_INSTANCE_TYPES if instance_types is None else instance_types)


def autoscaler_launches(config: dict, node_types: dict[str, dict], n_trials: int,
                        trial_resources: dict[str, float]) -> dict[str, int]:
    """The worker nodes Ray's default autoscaler (v1: ResourceDemandScheduler.get_nodes_to_launch with
    its default utilization scorer) launches for `n_trials` pending Tune trials of `trial_resources`
    each, on a cluster of only the head. A Tune trial asks for its resources as a placement group of
    one bundle (PACK), which is how they are passed here."""
    from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE
    from ray.core.generated.common_pb2 import Bundle, PlacementStrategy
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData

    head_type, head_ip = config["head_node_type"], "10.0.0.1"

    class HeadOnly:                                  # the provider view of a cluster that has just its head
        def node_tags(self, node_id):
            return {TAG_RAY_NODE_KIND: NODE_KIND_HEAD, TAG_RAY_USER_NODE_TYPE: head_type}

        def internal_ip(self, node_id):
            return head_ip

    from . import compat
    head_resources = dict(node_types[head_type]["resources"])
    pgs = [PlacementGroupTableData(strategy=PlacementStrategy.PACK,
                                   bundles=[Bundle(unit_resources={k: float(v) for k, v in trial_resources.items()})])
           for _ in range(n_trials)]
    return compat.nodes_to_launch(HeadOnly(), node_types, int(config.get("max_workers", 2)), head_type,
                                  float(config.get("upscaling_speed", 1.0)), head_ip, head_resources, pgs)


# ---------------------------------------------------------------------------------------------
# GPU smoke test (run on a GPU node: `python -m sweeps.cluster gpu-smoke --address auto`)
# ---------------------------------------------------------------------------------------------

def _nvidia_smi() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or out.stderr.strip() or f"nvidia-smi exit {out.returncode}"
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi not usable ({type(e).__name__})"


def gpu_smoke(iterations: int = 50) -> dict:
    """Train one small network on CUDA here; RuntimeError naming the cause when CUDA is not used (a
    driver too old for torch's CUDA build makes `--device auto` train on the CPU without a word)."""
    import torch

    info = {"host": socket.gethostname(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "nvidia_smi": _nvidia_smi(), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"CUDA is not available on {info['host']}: torch {info['torch']} (a CUDA {info['torch_cuda']} build) "
            f"finds no usable GPU; nvidia-smi: {info['nvidia_smi']}; CUDA_VISIBLE_DEVICES="
            f"{info['CUDA_VISIBLE_DEVICES']}. Trials with --device auto would train on the CPU. CUDA 13.0 needs "
            f"an NVIDIA driver >= 580: check the node's ImageId (cluster.yaml)")
    from imbalance_core.trial import TrialConfig, run_trial
    r = run_trial(TrialConfig(dataset="mnist-sample", iterations=iterations, device="cuda"))
    if not str(r["device"]).startswith("cuda"):
        raise RuntimeError(f"the smoke trial ran on {r['device']}, not CUDA")
    info.update(device=r["device"], gpu=torch.cuda.get_device_name(0), auc=round(float(r["auc"]), 2),
                images_per_second=round(float(r["images_per_second"])))
    return info


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

_SECRET_PATTERNS = [
    (r"AKIA[0-9A-Z]{16}", "an AWS access key id"),
    (r"(?i)aws_secret_access_key|aws_session_token", "an AWS secret key name"),
    (r"(?i)(password|passwd|secret)\s*[:=]", "a password/secret value"),
    (r"(?i)RAY_AUTH_TOKEN\s*=", "a Ray auth token value"),
    (r"-----BEGIN [A-Z ]*PRIVATE KEY-----", "a private key"),
    # a token: 32+ characters of letters and digits (a Ray token is 64 hex digits)
    (r"(?<![A-Za-z0-9/+_.-])(?=[A-Za-z0-9+/_-]*[0-9])(?=[A-Za-z0-9+/_-]*[A-Za-z])[A-Za-z0-9+/_-]{32,}"
     r"(?![A-Za-z0-9/+_.-])", "a long random-looking string"),
]
# The commit every node checks out, as render pins it (a commit id is public, not a secret).
_PINNED_COMMIT = re.compile(r'git checkout -q --detach "([0-9a-f]{40}|[0-9a-f]{64})"')


def pinned_commits(text: str) -> set[str]:
    """The commit shas a rendered config pins (`git checkout -q --detach "<sha>"`)."""
    return set(_PINNED_COMMIT.findall(text))


def find_secrets(text: str) -> list[str]:
    """What in a config text looks like a credential (empty list: nothing). The commit a rendered file pins
    is not one: it is taken out before the scan, everywhere it occurs."""
    for sha in pinned_commits(text):
        text = text.replace(sha, "<pinned commit>")
    hits = []
    for pattern, what in _SECRET_PATTERNS:
        for m in re.finditer(pattern, text):
            hits.append(f"{what}: {m.group(0)[:12]}...")
    return hits


# The files cluster.yaml's file_mounts copy from your machine, and how to make each. `ray up` stops with an
# AssertionError traceback (ray/autoscaler/_private/updater.py) on a file mount whose local file is missing.
FILE_MOUNT_HOWTO = {
    "~/.ray/auth_token": "ray get-auth-token --generate > /dev/null && chmod 600 ~/.ray/auth_token",
    # mounted by configs made before the password moved to the head (cluster.yaml makes it there now)
    "~/.mlflow-db-password.txt":
        "openssl rand -hex 24 > ~/.mlflow-db-password.txt && chmod 600 ~/.mlflow-db-password.txt",
}


def missing_file_mounts(config: dict) -> list[str]:
    """One line per file mount whose local file does not exist here, naming the command that makes it."""
    out = []
    for remote, local in (config.get("file_mounts") or {}).items():
        if not os.path.exists(os.path.expanduser(str(local))):
            how = FILE_MOUNT_HOWTO.get(str(local)) or FILE_MOUNT_HOWTO.get(str(remote))
            out.append(f"file mount {remote}: {local} does not exist on this machine; `ray up` would stop with a "
                       f"traceback. " + (f"Create it: {how}" if how else "Create it, or remove the mount"))
    return out


# ---------------------------------------------------------------------------------------------
# Least privilege: the head's instance profile, scoped to what its autoscaler does
# ---------------------------------------------------------------------------------------------

def head_policy(config: dict) -> dict:
    """The IAM policy of the head's instance profile: what Ray's AWS node provider calls from the head
    (ray/autoscaler/_private/aws/node_provider.py: create_instances, instances.filter, create_tags,
    terminate; describe_instance_types and describe_images when it reads its config), for this cluster's
    instances only (tag `ray-cluster-name`), in its region, launched into the rendered subnets and security
    group. No iam:PassRole (workers get no instance profile), no S3, no stop/start (cache_stopped_nodes:
    false)."""
    region = config["provider"]["region"]
    cluster = config["cluster_name"]
    subnets, groups, images = set(), set(), set()
    for nt in config["available_node_types"].values():
        nc = nt.get("node_config", {})
        subnets |= set(nc.get("SubnetIds", []))
        groups |= set(nc.get("SecurityGroupIds", []))
        if nc.get("ImageId"):
            images.add(nc["ImageId"])
    arn = f"arn:aws:ec2:{region}"
    tag = {"StringEquals": {"aws:ResourceTag/ray-cluster-name": cluster}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Describe", "Effect": "Allow", "Resource": "*",
             "Action": ["ec2:DescribeInstances", "ec2:DescribeInstanceTypes", "ec2:DescribeImages",
                        "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeKeyPairs"],
             "Condition": {"StringEquals": {"aws:RequestedRegion": region}}},
            {"Sid": "LaunchThisClustersInstances", "Effect": "Allow", "Action": "ec2:RunInstances",
             "Resource": f"{arn}:*:instance/*",
             "Condition": {"StringEquals": {"aws:RequestTag/ray-cluster-name": cluster}}},
            {"Sid": "LaunchIntoTheRenderedNetwork", "Effect": "Allow", "Action": "ec2:RunInstances",
             "Resource": sorted(f"{arn}:*:subnet/{s}" for s in subnets)
             + sorted(f"{arn}:*:security-group/{g}" for g in groups)
             + sorted(f"{arn}::image/{i}" for i in images)
             + [f"{arn}:*:volume/*", f"{arn}:*:network-interface/*", f"{arn}:*:key-pair/*"]},
            {"Sid": "TagAtLaunch", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": f"{arn}:*:instance/*",
             "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}}},
            {"Sid": "TagAndTerminateThisClustersInstances", "Effect": "Allow",
             "Action": ["ec2:CreateTags", "ec2:TerminateInstances"], "Resource": f"{arn}:*:instance/*",
             "Condition": tag},
        ],
    }


# ---------------------------------------------------------------------------------------------
# The rehearsal: the rendered file on Ray's `local` provider (scripts/rehearse_cluster.sh)
# ---------------------------------------------------------------------------------------------

def local_provider_config(config: dict, head_ip: str, ssh_private_key: str,
                          worker_ips: list[str] | None = None) -> dict:
    """The rendered cluster config with only its provider and node types swapped for Ray's `local` provider
    (`head_ip`, `worker_ips`; Ray makes its one node type, `local.cluster.node`, itself: it refuses
    `available_node_types` in a local config) and the SSH key that provider needs (AWS makes its own key
    pair). Every command list, file mount and other setting is kept as it is."""
    out = copy.deepcopy(config)
    out.pop("available_node_types", None)
    out.pop("head_node_type", None)
    out["provider"] = {"type": "local", "head_ip": head_ip, "worker_ips": list(worker_ips or [])}
    out["auth"] = {**(out.get("auth") or {}), "ssh_private_key": ssh_private_key}
    return out


# ---------------------------------------------------------------------------------------------
# The driver's side: never join a cluster on the network without token auth
# ---------------------------------------------------------------------------------------------

def ray_address_host(address: str) -> str | None:
    """The host `ray.init(address=...)` would connect to: `auto` read as Ray reads it (the last `ray start`
    here, else a running GCS), and 127.0.0.1/localhost turned into this machine's routable address as Ray
    does on Linux, unless Ray's loopback-only mode is on (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), the only
    mode in which a cluster at 127.0.0.1 listens on loopback only. A `ray://` client address is taken as
    written. None when it cannot be told."""
    if address.startswith("ray://"):
        hostport = address[len("ray://"):]
    else:
        try:
            from .compat import bootstrap_address
            hostport = bootstrap_address(address) or ""
        except Exception:                                 # noqa: BLE001 - no cluster found: cannot tell
            return None
    host = hostport.rsplit(":", 1)[0] if ":" in hostport else hostport
    return host.strip("[]") or None


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_unauthenticated_cluster(address: str, auth_mode: str | None) -> str | None:
    """The reason to refuse joining the Ray cluster at `address` with RAY_AUTH_MODE=`auth_mode` (None: fine).
    Without token auth anyone who reaches a cluster's ports can run code on every node: allowed only where
    nothing but this machine can reach them (a loopback address)."""
    if (auth_mode or "").strip().lower() != "disabled":
        return None
    host = ray_address_host(address)
    if is_loopback(host):
        return None
    where = f"at {host}" if host else f"at --address {address} (whose host could not be determined)"
    return (f"RAY_AUTH_MODE=disabled for the Ray cluster {where}, which is not a loopback address: without token "
            f"auth anyone who reaches its ports can run code on its nodes. Use token auth: RAY_AUTH_MODE=token on "
            f"every node and for this driver, with the cluster's token in ~/.ray/auth_token (docs/cluster.md, "
            f"'Ray token auth')")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweeps.cluster", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="can `ray up` run this config from here? Ray's schema, a scan for "
                                        "credentials, placeholders left, file mounts missing on this machine")
    v.add_argument("path", nargs="?", default=str(DEFAULT_CLUSTER_YAML))
    r = sub.add_parser("render", help="fill cluster.yaml's placeholders from the environment: "
                                      + ", ".join(PLACEHOLDERS))
    r.add_argument("path", nargs="?", default=str(DEFAULT_CLUSTER_YAML))
    r.add_argument("-o", "--output", required=True)
    p = sub.add_parser("head-policy", help="print the IAM policy of the head's instance profile for a rendered "
                                           "config (docs/cluster.md, step 3)")
    p.add_argument("path")
    a = sub.add_parser("allowed-hosts", help="print MLflow's --allowed-hosts for clients in the given IPv4 ranges")
    a.add_argument("cidrs", help="comma-separated, e.g. 172.31.0.0/16")
    a.add_argument("--port", type=int, default=5000)
    lo = sub.add_parser("local", help="a rendered config on Ray's local provider (the rehearsal): only the "
                                      "provider and node types swapped")
    lo.add_argument("path")
    lo.add_argument("--head-ip", required=True)
    lo.add_argument("--worker-ip", action="append", default=[])
    lo.add_argument("--ssh-key", required=True)
    lo.add_argument("-o", "--output", required=True)
    g = sub.add_parser("gpu-smoke", help="train a small network on a GPU node of the cluster (one Ray task with "
                                         "num_gpus=1); exit 1, saying why, if CUDA is not used")
    g.add_argument("--address", default="auto")
    g.add_argument("--tasks", type=int, default=1, help="GPU tasks at once (one per GPU node to check)")
    args = ap.parse_args(argv)

    if args.cmd == "gpu-smoke":
        import ray
        ray.init(address=args.address, job_config=ray.job_config.JobConfig(code_search_path=[str(REPO_ROOT)]))
        try:
            task = ray.remote(num_gpus=1, max_retries=0)(gpu_smoke)
            infos = ray.get([task.remote() for _ in range(args.tasks)])
        except Exception as e:  # noqa: BLE001 - the task's error names the cause
            print(f"GPU SMOKE TEST FAILED: {e}", file=sys.stderr)
            return 1
        finally:
            ray.shutdown()
        for info in infos:
            print("GPU smoke test passed: " + json.dumps(info))
        return 0

    if args.cmd == "validate":
        text = Path(args.path).read_text()
        config = yaml.safe_load(text)
        validate(config)
        problems = []
        secrets = find_secrets(text)
        if secrets:
            problems.append(f"looks like it holds credentials: {secrets}")
        left = placeholders_left(text)
        if left:
            problems.append(f"placeholders to fill before `ray up`: {', '.join(left)} (set them and run "
                            f"`python -m sweeps.cluster render -o {args.path}` on cluster.yaml)")
        problems += missing_file_mounts(config)
        for line in problems:
            print(f"{args.path}: {line}", file=sys.stderr)
        if problems:
            return 1
        print(f"{args.path}: valid (Ray schema), no credentials, no placeholders, every file mount here: "
              f"ready for `ray up`")
        return 0
    if args.cmd == "render":
        try:
            text = render(Path(args.path).read_text())
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        config = yaml.safe_load(text)
        validate(config)
        Path(args.output).write_text(text)
        for line in missing_file_mounts(config):
            print(f"before `ray up`: {line}", file=sys.stderr)
        left = placeholders_left(text)
        if left:
            print(f"wrote {args.output}, but `ray up` would fail: set {', '.join(left)} and render again "
                  f"(image ids: aws ssm get-parameter --name {GPU_IMAGE_SSM} / {HEAD_IMAGE_SSM} "
                  f"--query Parameter.Value --output text --region <region>; the network and the head's "
                  f"instance profile: docs/cluster.md, steps 3, 6 and 7)", file=sys.stderr)
            return 1
        print(f"wrote {args.output} (code version {commit_sha(os.environ.get('IMBALANCE_REPO_REF') or 'HEAD')})")
        return 0
    if args.cmd == "head-policy":
        config = load_cluster_yaml(args.path)
        left = placeholders_left(Path(args.path).read_text())
        if left:
            print(f"error: {args.path} still has placeholders ({', '.join(left)}): render it first", file=sys.stderr)
            return 2
        print(json.dumps(head_policy(config), indent=2))
        return 0
    if args.cmd == "allowed-hosts":
        try:
            print(",".join(allowed_hosts(args.cidrs, args.port)))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.cmd == "local":
        config = local_provider_config(load_cluster_yaml(args.path), args.head_ip, args.ssh_key, args.worker_ip)
        validate(config)
        Path(args.output).write_text(yaml.safe_dump(config, sort_keys=False, width=10 ** 6))
        print(f"wrote {args.output}: {args.path} on Ray's local provider (head {args.head_ip}, workers "
              f"{args.worker_ip or 'none'})")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
