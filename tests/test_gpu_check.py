"""benchmarks/gpu_check.py, the prepared GPU check, cannot rot: its --cpu dry run (the same code path at tiny
sizes: stacks of 1 and 2, a 3-network pack at 5 iterations, a simulated out-of-memory) runs here, and what it
writes is the results file the device run writes, section by section."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = ("lenet5", "allcnnc", "resnet10")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check") / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_every_section_runs(dry_run):
    r, stdout = dry_run
    assert r["mode"] == "cpu-dry-run" and r["schema"] == 1
    assert r["sections"] == {s: "ok" for s in ("env", "memory", "equality", "oom", "resume", "packs", "budget24",
                                                  "throughput")}
    assert all(r[s]["status"] == "ok" and r[s]["seconds"] >= 0 for s in r["sections"])
    assert r["summary"]["sections"] == r["sections"] and "[gpu_check] packs: ok" in stdout
    assert r["env"]["torch"] and "cudnn.allow_tf32" in r["env"]["flags"]


def test_stacked_equals_alone_for_all_three_models(dry_run):
    """On the CPU the stacked (vmap) and the alone networks agree to float rounding: train and eval."""
    eq = dry_run[0]["equality"]
    assert eq["ok"]
    for m in MODELS:
        run = eq[m]["default_flags"]
        assert run["train"]["max_diff_relative_to_update"] < 1e-3 and run["eval"]["max_abs_softmax_diff"] < 1e-5
        assert run["eval"]["argmax_agreement"] == 1.0


def test_a_stacked_pack_cut_inside_each_phase_resumes_bit_identical(dry_run):
    """The section the device run repeats on CUDA: a stacked pack of mixed losses, cut inside phase 1 and inside
    phase 2 and resumed from the cut's state, equals the pack run through in every field."""
    r = dry_run[0]["resume"]
    assert r["ok"] and r["groups"] == [1, 2] and r["networks"] == 5
    assert [c["at"] for c in r["cuts"]] == [[1, 3], [2, 4]]
    for c in r["cuts"]:
        assert c["identical"] and c["differing_fields"] == {} and c["resumed_at"] == [c["at"][0], c["at"][1] + 1]
        assert c["auc_resumed"] == c["auc_through"]
    assert dry_run[0]["summary"]["resume_ok"] is True


def test_throughput_rows_per_model_and_stack(dry_run):
    rows = dry_run[0]["throughput"]["rows"]
    assert [(x["model"], x["stack"]) for x in rows] == [(m, k) for m in MODELS for k in (1, 2)]
    for x in rows:
        assert x["status"] == "ok" and x["images_per_s"] > 0 and x["steps"] == 2
        assert x["estimate_bytes"] > 0 and x["estimate_bytes_x2"] == 2 * x["estimate_bytes"]


def test_packs_and_their_cpu_reference(dry_run):
    """Two packs in one process through trial.run_trials, each network looked up in the CPU results."""
    p = dry_run[0]["packs"]
    published = Path(__file__).resolve().parents[1] / "docs" / "results" / "mnist-paper" / "networks.csv"
    with published.open(newline="") as f:
        rows = sum(1 for _ in csv.DictReader(f))                     # the page grows as its sweep runs
    assert rows >= 90 and p["reference_rows"] == rows and p["two_packs_in_one_process"] == 2
    assert [x["name"] for x in p["packs"]] == ["whole-gpu", "a10g-24GB"]
    for pack in p["packs"]:
        assert pack["networks"] == 3 and pack["iterations"] == 5 and not pack["comparable"]
        assert pack["compared_with_cpu"] == 3
        assert [x["method"] for x in pack["rows"]] == ["baseline", "ros", "two-phase-ros"]
        assert all(0 < x["auc"] <= 100 and 90 < x["cpu_auc"] <= 100 for x in pack["rows"])
    assert p["gpu_runs_identical"]                 # on the CPU, two runs of a pack are the same networks


def test_oom_and_memory_plans(dry_run):
    r = dry_run[0]
    oom = r["oom"]
    assert oom["ok"] and oom["simulated"] and oom["groups"] == [1] * 6
    assert [e["retry_as"] for e in oom["events"]] == [3, 1]
    for m in MODELS:        # an A10G's plan at GPU shares 1, 1/2, 1/4: never larger for a smaller share
        plan = r["memory"]["planned"][m]
        assert plan["1.0"] >= plan["0.5"] >= plan["0.25"] >= 1
        assert r["budget24"]["planned"][m] == plan["1.0"]


def test_prepare_and_the_shell_wrapper(tmp_path):
    sys.path.insert(0, str(REPO))
    from benchmarks import gpu_check
    src = tmp_path / "data"
    (src / "MNIST" / "raw").mkdir(parents=True)
    (src / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"x" * 10)
    assert gpu_check.prepare(src, tmp_path / "gpu-data", ignore=False) == 0
    assert (tmp_path / "gpu-data" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").read_bytes() == b"x" * 10
    assert gpu_check.prepare(tmp_path / "nothing", tmp_path / "gpu-data", ignore=False) == 2
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")]).returncode == 0
