"""The cluster config (cluster.yaml) as code: load, validate with Ray's own schema, render its
placeholders, and what Ray's AWS autoscaler would do with its node types.

    python -m sweeps.cluster validate [cluster.yaml]
    python -m sweeps.cluster render [cluster.yaml] -o my-cluster.yaml   # fill placeholders from env, pin the commit
    python -m sweeps.cluster gpu-smoke [--address auto]                 # on the head: CUDA really used on a GPU node?

`aws_node_types` / `autoscaler_launches` run Ray's own AWS resource filling and v1 node choice on
cluster.yaml's node types (which types `ray up`'s autoscaler would start for N pending trials).

Running cluster.yaml's node types as a local autoscaling cluster on Ray's fake multi-node provider
(`fake_provider_config`, `LocalCluster`) is test harness: tests/cluster_harness.py.
"""
from __future__ import annotations

import argparse
import copy
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
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
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
        if env.get(var):
            text = text.replace(placeholder, env[var].strip())
    return text


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
    from ray.autoscaler._private.aws import node_provider as aws

    instance_types = EC2_INSTANCE_TYPES if instance_types is None else instance_types
    real = aws.list_ec2_instances
    aws.list_ec2_instances = lambda region, credentials=None: [copy.deepcopy(v) for v in instance_types.values()]
    try:
        filled = aws.AWSNodeProvider.fillout_available_node_types_resources(copy.deepcopy(config))
    finally:
        aws.list_ec2_instances = real
    return filled["available_node_types"]


def autoscaler_launches(config: dict, node_types: dict[str, dict], n_trials: int,
                        trial_resources: dict[str, float]) -> dict[str, int]:
    """The worker nodes Ray's default autoscaler (v1: ResourceDemandScheduler.get_nodes_to_launch with
    its default utilization scorer) launches for `n_trials` pending Tune trials of `trial_resources`
    each, on a cluster of only the head. A Tune trial asks for its resources as a placement group of
    one bundle (PACK), which is how they are passed here."""
    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import ResourceDemandScheduler
    from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE
    from ray.core.generated.common_pb2 import Bundle, PlacementStrategy
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData

    head_type, head_ip = config["head_node_type"], "10.0.0.1"

    class HeadOnly:                                  # the provider view of a cluster that has just its head
        def node_tags(self, node_id):
            return {TAG_RAY_NODE_KIND: NODE_KIND_HEAD, TAG_RAY_USER_NODE_TYPE: head_type}

        def internal_ip(self, node_id):
            return head_ip

    head_resources = dict(node_types[head_type]["resources"])
    scheduler = ResourceDemandScheduler(HeadOnly(), copy.deepcopy(node_types), int(config.get("max_workers", 2)),
                                        head_type, float(config.get("upscaling_speed", 1.0)))
    pgs = [PlacementGroupTableData(strategy=PlacementStrategy.PACK,
                                   bundles=[Bundle(unit_resources={k: float(v) for k, v in trial_resources.items()})])
           for _ in range(n_trials)]
    launch, _ = scheduler.get_nodes_to_launch(
        nodes=["head"], launching_nodes={}, resource_demands=[],
        unused_resources_by_ip={head_ip: head_resources}, pending_placement_groups=pgs,
        max_resources_by_ip={head_ip: head_resources}, ensure_min_cluster_size=[],
        node_availability_summary=NodeAvailabilitySummary(node_availabilities={}))
    return dict(launch)


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
    (r"(?<![A-Za-z0-9/+_.-])[A-Za-z0-9+/_-]{32,}(?![A-Za-z0-9/+_.-])", "a long random-looking string"),
]


def find_secrets(text: str) -> list[str]:
    """What in a config text looks like a credential (empty list: nothing)."""
    hits = []
    for pattern, what in _SECRET_PATTERNS:
        for m in re.finditer(pattern, text):
            hits.append(f"{what}: {m.group(0)[:12]}...")
    return hits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sweeps.cluster", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="Ray's schema check of a cluster config, plus a secrets scan")
    v.add_argument("path", nargs="?", default=str(DEFAULT_CLUSTER_YAML))
    r = sub.add_parser("render", help="fill cluster.yaml's placeholders from the environment: "
                                      + ", ".join(PLACEHOLDERS))
    r.add_argument("path", nargs="?", default=str(DEFAULT_CLUSTER_YAML))
    r.add_argument("-o", "--output", required=True)
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
        validate(yaml.safe_load(text))
        secrets = find_secrets(text)
        if secrets:
            print(f"{args.path}: looks like it holds credentials: {secrets}", file=sys.stderr)
            return 1
        left = placeholders_left(text)
        print(f"{args.path}: valid (Ray schema), no credentials" +
              (f"; placeholders to fill before `ray up` (render): {', '.join(left)}" if left else ""))
        return 0
    if args.cmd == "render":
        try:
            text = render(Path(args.path).read_text())
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        validate(yaml.safe_load(text))
        Path(args.output).write_text(text)
        left = placeholders_left(text)
        if left:
            print(f"wrote {args.output}, but `ray up` would fail: set {', '.join(left)} and render again "
                  f"(image ids: aws ssm get-parameter --name {GPU_IMAGE_SSM} / {HEAD_IMAGE_SSM} "
                  f"--query Parameter.Value --output text --region <region>)", file=sys.stderr)
            return 1
        print(f"wrote {args.output} (code version {commit_sha(os.environ.get('IMBALANCE_REPO_REF') or 'HEAD')})")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
