"""cluster.yaml as Ray's launcher and autoscaler see it on AWS, checked with Ray's own functions (no cloud):

- the resources `ray up` gives each node type (AWSNodeProvider.fillout_available_node_types_resources,
  fed the instance types' DescribeInstanceTypes fields): `memory` and `accelerator_type:A10G` added;
- the node types the default autoscaler (v1: ResourceDemandScheduler.get_nodes_to_launch) launches for
  1, 5 and 50 pending GPU trials: never the 8-GPU type (with it switched on, 5 trials start it);
- images named, set-up commands that would run on a fresh Ubuntu 24.04 node, the code version pinned,
  the docs' head-IP capture free of the tty's '\\r', and the GPU smoke test failing loudly without CUDA.
"""
from __future__ import annotations

import copy
import importlib
import importlib.abc
import importlib.machinery
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import yaml

from sweeps import cluster as C
from sweeps import compat

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
DOCS = REPO / "docs" / "cluster.md"
TRIAL = {"CPU": 4, "GPU": 1}          # what docs/cluster.md's sweep asks per trial (--cpus-per-trial 4)


class _BotoStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """boto3/botocore stand-ins, only for importing Ray's AWS provider module where boto3 is not installed
    (the functions used here make no AWS call: the instance types are given)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("boto3", "botocore"):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        class Stub(types.ModuleType):
            def __getattr__(self, attr):
                if attr.startswith("__"):
                    raise AttributeError(attr)
                return mock.MagicMock(name=f"{self.__name__}.{attr}")
        m = Stub(spec.name)
        m.__path__, m.__version__ = [], "99.0"
        return m

    def exec_module(self, module):
        pass


@pytest.fixture(scope="module")
def aws():
    try:
        importlib.import_module("boto3")
        stub = None
    except ImportError:
        stub = _BotoStub()
        sys.meta_path.insert(0, stub)
    yield
    if stub is not None:
        sys.meta_path.remove(stub)
        for name in [n for n in sys.modules if n.split(".")[0] in ("boto3", "botocore")
                     or n.startswith(compat.AWS_PROVIDER_MODULE)]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def cfg() -> dict:
    return C.load_cluster_yaml(CLUSTER_YAML)


@pytest.fixture(scope="module")
def aws_types(cfg, aws) -> dict:
    return C.aws_node_types(cfg)


def test_ray_up_adds_memory_and_accelerator_type_on_aws(cfg, aws_types):
    g1, g8, head = aws_types["gpu_1x"]["resources"], aws_types["gpu_8x"]["resources"], aws_types["head"]["resources"]
    OBJ = compat.ray_constants().DEFAULT_OBJECT_STORE_MEMORY_PROPORTION
    assert g1 == {"CPU": 8, "GPU": 1, "memory": int(32768 * 2 ** 20 * (1 - OBJ)), "accelerator_type:A10G": 1}
    assert g8 == {"CPU": 192, "GPU": 8, "memory": int(786432 * 2 ** 20 * (1 - OBJ)), "accelerator_type:A10G": 1}
    assert head == {"CPU": 8, "GPU": 0}                       # Ray fills no memory for the head
    for name, nt in cfg["available_node_types"].items():      # what the YAML declares is kept
        assert all(aws_types[name]["resources"][k] == v for k, v in nt["resources"].items())


@pytest.mark.parametrize("cpus", [4, 1])
def test_a_small_sweep_never_starts_the_8_gpu_type(cfg, aws_types, cpus):
    trial = {"CPU": cpus, "GPU": 1}
    got = {n: C.autoscaler_launches(cfg, aws_types, n, trial) for n in (1, 5, 30, 50)}
    print(f"\n[autoscaler v1, AWS resources, trials of {trial}] {got}")
    assert got[1] == {"gpu_1x": 1}
    assert got[5] == {"gpu_1x": 5}
    assert got[30] == got[50] == {"gpu_1x": cfg["max_workers"]}     # the cluster's cap, all one-GPU nodes
    assert all("gpu_8x" not in g for g in got.values())


def test_why_gpu_8x_is_off(cfg, aws_types):
    """With the 8-GPU type on (max_workers 1), the AWS-filled resources make the autoscaler start it for
    5 pending trials, and for 50 it takes it next to seven gpu_1x; with only the declared CPU/GPU
    resources (what a fake provider sees) it would not: the trap the fake-cluster tests could not show."""
    on = copy.deepcopy(cfg)
    on["available_node_types"]["gpu_8x"]["max_workers"] = 1
    filled = copy.deepcopy(aws_types)
    filled["gpu_8x"]["max_workers"] = 1
    assert C.autoscaler_launches(on, filled, 1, TRIAL) == {"gpu_1x": 1}
    assert C.autoscaler_launches(on, filled, 5, TRIAL) == {"gpu_8x": 1}
    assert C.autoscaler_launches(on, filled, 50, TRIAL) == {"gpu_1x": 7, "gpu_8x": 1}
    declared = {k: {**v, "resources": on["available_node_types"][k]["resources"]} for k, v in filled.items()}
    assert C.autoscaler_launches(on, declared, 5, TRIAL) == {"gpu_1x": 5}


# --------------------------------------------------------------------------- images, set-up, code version

def test_every_node_type_names_its_image(cfg):
    text = CLUSTER_YAML.read_text()
    images = {name: nt["node_config"].get("ImageId") for name, nt in cfg["available_node_types"].items()}
    assert images == {"head": C.PLACEHOLDERS["IMBALANCE_HEAD_IMAGE_ID"],
                      "gpu_1x": C.PLACEHOLDERS["IMBALANCE_GPU_IMAGE_ID"],
                      "gpu_8x": C.PLACEHOLDERS["IMBALANCE_GPU_IMAGE_ID"]}
    # and says which image and how to find its id in a region
    assert "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04)" in text
    assert C.GPU_IMAGE_SSM in text and C.HEAD_IMAGE_SSM in text
    assert "580" in text and "CUDA 13.0" in text                    # the driver the torch build needs


def _commands(cfg) -> list[str]:
    return [c for key in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands") for c in cfg[key]]


def test_setup_commands_are_valid_shell_and_install_what_ffcv_needs(cfg):
    for cmd in _commands(cfg):
        proc = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert proc.returncode == 0, f"not valid bash: {cmd}\n{proc.stderr}"
    apt = next(c for c in cfg["setup_commands"] if "apt-get" in c and "install" in c)
    installed = set(apt.split("--no-install-recommends", 1)[1].split())
    assert {"build-essential", "python3-dev", "python3-venv", "nfs-common", "git"} <= installed
    # scripts/setup.sh then finds its packages (and never needs root on a node)
    setup_sh = (REPO / "scripts" / "setup.sh").read_text()
    needed = set(re.search(r'APT_PKGS="([^"]+)"', setup_sh).group(1).split())
    assert needed <= installed, needed - installed
    # first boot: wait for cloud-init and unattended upgrades, and let apt wait for its lock
    assert "cloud-init status --wait" in apt
    assert all("DPkg::Lock::Timeout=" in part for part in apt.split("&&") if "apt-get" in part)
    assert apt.index("cloud-init") < apt.index("apt-get")
    # a node that comes later (a replacement) reuses the wheels the first one downloaded and built
    assert "PIP_CACHE_DIR=/shared/cache/pip bash scripts/setup.sh" in "\n".join(cfg["setup_commands"])


def test_render_pins_one_commit_for_every_node(cfg):
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    env = {"IMBALANCE_REPO_URL": "https://example.org/r.git", "IMBALANCE_NFS_SERVER": "10.0.0.9",
           "IMBALANCE_GPU_IMAGE_ID": "ami-0123456789abcdef0", "IMBALANCE_HEAD_IMAGE_ID": "ami-0fedcba9876543210",
           "IMBALANCE_SUBNET_IDS": "subnet-0a1b2c3d4e5f60718", "IMBALANCE_SECURITY_GROUP_ID": "sg-0123456789abcdef0",
           "IMBALANCE_HEAD_INSTANCE_PROFILE_ARN": "arn:aws:iam::123456789012:instance-profile/imbalance-head",
           "IMBALANCE_VPC_CIDR": "172.31.0.0/16"}
    text = C.render(CLUSTER_YAML.read_text(), env)
    assert C.placeholders_left(text) == []
    rendered = yaml.safe_load(text)
    C.validate(rendered)
    setup = "\n".join(rendered["setup_commands"])
    assert f'git checkout -q --detach "{head}"' in setup and f'= "{head}"' in setup
    assert "git pull" not in setup                     # a later node cannot move to a newer commit
    assert rendered["available_node_types"]["gpu_1x"]["node_config"]["ImageId"] == "ami-0123456789abcdef0"
    assert rendered["available_node_types"]["head"]["node_config"]["ImageId"] == "ami-0fedcba9876543210"
    # a branch or tag is resolved to its sha; an unknown ref is refused
    parent = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD~1"], capture_output=True, text=True).stdout.strip()
    assert f'--detach "{parent}"' in C.render(CLUSTER_YAML.read_text(), {**env, "IMBALANCE_REPO_REF": "HEAD~1"})
    with pytest.raises(ValueError, match="no-such-branch"):
        C.render(CLUSTER_YAML.read_text(), {**env, "IMBALANCE_REPO_REF": "no-such-branch"})
    # the shipped file alone is not launchable: render says which variables are missing
    assert set(C.placeholders_left(CLUSTER_YAML.read_text())) == set(C.PLACEHOLDERS)


def test_render_cli_fails_while_placeholders_are_left(tmp_path, monkeypatch, capsys):
    for var in C.PLACEHOLDERS:
        monkeypatch.delenv(var, raising=False)
    assert C.main(["render", str(CLUSTER_YAML), "-o", str(tmp_path / "c.yaml")]) == 1
    err = capsys.readouterr().err
    assert "IMBALANCE_GPU_IMAGE_ID" in err and C.GPU_IMAGE_SSM in err
    for var, value in [("IMBALANCE_REPO_URL", "https://example.org/r.git"), ("IMBALANCE_NFS_SERVER", "10.0.0.9"),
                       ("IMBALANCE_GPU_IMAGE_ID", "ami-0123456789abcdef0"),
                       ("IMBALANCE_HEAD_IMAGE_ID", "ami-0fedcba9876543210"),
                       ("IMBALANCE_SUBNET_IDS", "subnet-0a1b2c3d4e5f60718"),
                       ("IMBALANCE_SECURITY_GROUP_ID", "sg-0123456789abcdef0"),
                       ("IMBALANCE_HEAD_INSTANCE_PROFILE_ARN",
                        "arn:aws:iam::123456789012:instance-profile/imbalance-head"),
                       ("IMBALANCE_VPC_CIDR", "172.31.0.0/16")]:
        monkeypatch.setenv(var, value)
    assert C.main(["render", str(CLUSTER_YAML), "-o", str(tmp_path / "c.yaml")]) == 0


# --------------------------------------------------------------------------- the docs' commands

def _docs_line(prefix: str) -> str:
    lines = [ln for ln in DOCS.read_text().splitlines() if ln.strip().startswith(prefix)]
    assert lines, f"docs/cluster.md has no line starting with {prefix!r}"
    return lines[0].strip()


def test_head_ip_capture_strips_the_ttys_carriage_return(tmp_path):
    """`ray exec` runs its command in a tty, so its output lines end in '\\r\\n'. The docs' capture gives
    the bare IP, and the sweep command built from it passes the URI check."""
    fake = tmp_path / "bin" / "ray"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nprintf 'Fetched IP: 54.1.2.3\\r\\n'\nprintf '10.0.12.34\\r\\n'\n"
                    "printf 'Shared connection to 54.1.2.3 closed.\\r\\n' >&2\n")
    fake.chmod(0o755)
    capture = _docs_line("HEAD=$(")
    out = subprocess.run(["bash", "-c", f'{capture}\nprintf "%s" "$HEAD"'], capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"})
    assert out.stdout == "10.0.12.34", repr(out.stdout)
    from sweeps.full_grid import normalize_tracking_uri
    assert normalize_tracking_uri(f"http://{out.stdout}:5000") == "http://10.0.12.34:5000"


def test_docs_run_the_sweep_with_shared_storage_and_a_pinned_commit():
    text = DOCS.read_text()
    assert "--storage-path /shared/ray_results" in text
    readme = (REPO / "README.md").read_text()
    cluster_para = readme[readme.index("On a cluster"):][:900]
    assert "--storage-path /shared/ray_results" in cluster_para
    assert "--resume --tracking-uri" in text                     # the way back after a new head
    assert "git rev-parse HEAD" in text                          # how to check the nodes' code version


def test_gpu_smoke_test_fails_loudly_without_cuda(capsys):
    """On this machine (no CUDA) the smoke check the docs run on a GPU node must fail, naming why."""
    import torch
    if torch.cuda.is_available():                     # a GPU machine: the smoke test trains there
        info = C.gpu_smoke(iterations=20)
        assert info["device"].startswith("cuda") and info["gpu"]
        return
    with pytest.raises(RuntimeError, match="CUDA is not available") as e:
        C.gpu_smoke()
    assert "driver >= 580" in str(e.value) and "would train on the CPU" in str(e.value)
