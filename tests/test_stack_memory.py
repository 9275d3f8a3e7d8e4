"""A pack that runs out of GPU memory halves its stack and goes on (packing.halve_on_oom wired into
trial.run_trials), and every network records how it was trained: its stack size, the splits, TF32, the
device's name, torch and CUDA versions (numerics.configure). On CPU the out-of-memory error is faked in the
one training loop: the first stacked group of more than two networks raises torch.OutOfMemoryError."""
from __future__ import annotations

import pytest
import torch

import imbalance_core.trial as T
from imbalance_core import numerics, packing
from imbalance_core.trial import TrialConfig, run_trials

SAMPLE = dict(dataset="mnist-sample", imbalance="step", rho=10, mu=0.5, iterations=6, batch_size=16, device="cpu")
TIMING = {"train_seconds", "images_per_second", "pack_seconds", "started_at", "ended_at", "oom_splits"}


def untimed(r) -> dict:
    return {k: v for k, v in r.to_dict().items() if k not in TIMING}


@pytest.fixture
def oom_once(monkeypatch):
    """train() raises OutOfMemoryError for the first group of more than two networks, then trains normally."""
    real, seen = T.train, []

    def train(nets, loader, schedule, **kw):
        seen.append(nets.K)
        if nets.K > 2 and not any(k == "oom" for k in seen):
            seen.append("oom")
            raise packing.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (faked)")
        return real(nets, loader, schedule, **kw)
    monkeypatch.setattr(T, "train", train)
    return seen


def test_a_group_out_of_memory_is_halved_and_trained_again_as_the_same_networks(oom_once):
    configs = [TrialConfig(**SAMPLE, method="ros", seed=s) for s in range(4)]
    steps = []
    halved = run_trials(configs, stack=True, max_stack=4, on_progress=lambda fin, st: steps.append(sorted(fin)))
    assert oom_once == [4, "oom", 2, 2]            # 4 at once failed; then two groups of 2
    assert steps == [[0, 1], [2, 3]]                # each group's networks reported as it finished
    assert all(r["oom_splits"] == 1 and r["stack_size"] == 2 for r in halved)
    # the same networks as a pack stacked two at a time from the start (rebuilt from their seeds)
    pairs = run_trials(configs, stack=True, max_stack=2)
    assert all(r["oom_splits"] == 0 and r["stack_size"] == 2 for r in pairs)
    assert [untimed(a) for a in halved] == [untimed(b) for b in pairs]


def test_one_network_that_does_not_fit_is_an_error_that_says_so(monkeypatch):
    def train(nets, loader, schedule, **kw):
        raise packing.OutOfMemoryError("CUDA out of memory (faked)")
    monkeypatch.setattr(T, "train", train)
    with pytest.raises(packing.OutOfMemoryError) as e:
        run_trials([TrialConfig(**SAMPLE, method="ros", seed=0)])
    assert "one network alone does not fit" in "".join(getattr(e.value, "__notes__", []))


def test_every_network_records_its_numerics_and_stack():
    r = run_trials([TrialConfig(**SAMPLE, method="baseline", seed=0), TrialConfig(**SAMPLE, method="ros", seed=0)])
    for x in r:
        assert x["tf32"] == "off" and x["stack_size"] == 1 and x["oom_splits"] == 0
        assert x["torch_version"] == torch.__version__ and x["cuda_version"] == (torch.version.cuda or "")
        assert x["device_name"] and x["device_name"] == numerics.configure("cpu").device_name


def test_cuda_numerics_are_fp32_and_deterministic_unless_tf32_is_allowed(monkeypatch):
    """configure() on a CUDA device (its name faked: this machine has none) sets cuDNN's convolutions and
    cuBLAS's matmuls to IEEE FP32 and cuDNN deterministic; allow_tf32 lets TF32 in. Restored afterwards."""
    saved = numerics.tf32_state()
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200 (faked)")
    try:
        n = numerics.configure(torch.device("cuda"))
        assert n.tf32 == "off" and n.device_name == "NVIDIA H200 (faked)"
        assert numerics.tf32_state() == {"conv": "ieee", "matmul": "ieee", "cudnn_deterministic": "True",
                                         "cudnn_benchmark": "False"}
        assert numerics.configure(torch.device("cuda"), allow_tf32=True).tf32 == "on"
        assert numerics.tf32_state()["conv"] == "tf32" and numerics.tf32_state()["matmul"] == "tf32"
        assert numerics.configure("cpu", allow_tf32=True).tf32 == "off"      # no TF32 on a CPU
    finally:
        torch.backends.cudnn.conv.fp32_precision = saved["conv"]
        torch.backends.cuda.matmul.fp32_precision = saved["matmul"]
        torch.backends.cudnn.deterministic = saved["cudnn_deterministic"] == "True"
        torch.backends.cudnn.benchmark = saved["cudnn_benchmark"] == "True"
