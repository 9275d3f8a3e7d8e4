"""GPU-only checks (skipped where CUDA is absent: the only skips of the suite). Run by benchmarks/gpu_check.sh
when its time allows (benchmarks/gpu_check.py measures the same and more into its results file)."""
import numpy as np
import pytest
import torch

from imbalance_core import packing
from imbalance_core.trial import TrialConfig, run_trial, run_trials

GIB = 2 ** 30

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _configs(shared_data, n=6):
    return [TrialConfig(dataset="mnist", data_dir=str(shared_data), imbalance="step", rho=10, mu=0.5,
                        method=m, seed=s, iterations=200, device="cuda")
            for m in ("baseline", "ros", "two-phase-ros") for s in range(n // 3)]


def test_stacked_pack_on_cuda_equals_networks_alone(shared_data):
    """vmap-stacked (grouped kernels) vs one network at a time on the same GPU: equal up to float
    reassociation: AUC within 0.2 points, >= 99% identical predictions."""
    configs = _configs(shared_data)
    packed = run_trials(configs)                       # CUDA default: stacked
    assert all(r["pack_size"] == len(configs) for r in packed)
    for c, p in zip(configs, packed):
        alone = run_trial(c)
        assert abs(alone["auc"] - p["auc"]) < 0.2
        cm_a, cm_p = np.asarray(alone["confusion_matrix"]), np.asarray(p["confusion_matrix"])
        assert np.abs(cm_a - cm_p).sum() / 2 <= 0.01 * cm_a.sum()
        assert p["auc"] > 95


def test_cuda_trial_learns(shared_data):
    r = run_trial(TrialConfig(dataset="mnist", data_dir=str(shared_data), imbalance="balanced", method="baseline",
                              iterations=500, device="cuda"))
    assert r["device"].startswith("cuda") and r["accuracy"] > 95


def test_pytorch_cache_counts_as_free():
    """A freed block stays in PyTorch's cache: mem_get_info reports it used, usable_memory counts it free."""
    packing.release_cached_memory()
    before = packing.memory_report("cuda")
    block = torch.empty(2 * GIB, dtype=torch.uint8, device="cuda")
    block.fill_(1)
    del block
    cached = packing.memory_report("cuda")
    assert cached.free <= before.free - 1.9 * GIB and cached.cached >= 2 * GIB
    assert cached.usable == pytest.approx(before.usable, rel=0.01)
    packing.release_cached_memory()
    assert packing.memory_report("cuda").free == pytest.approx(before.free, rel=0.01)


def test_a_gpu_share_and_a_process_budget_bound_the_stack():
    total = torch.cuda.mem_get_info()[1]
    whole, quarter = (packing.auto_pack_size("allcnnc", 256, "cuda", f) for f in (1.0, 0.25))
    assert quarter <= whole and quarter * packing.network_bytes("allcnnc", 256) <= 0.25 * total
    try:
        torch.cuda.set_per_process_memory_fraction(0.25)
        if hasattr(torch.cuda, "get_per_process_memory_fraction"):
            assert packing.usable_memory("cuda") <= 0.25 * total
            assert packing.auto_pack_size("allcnnc", 256, "cuda") == quarter
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def test_halve_on_oom_recovers_from_a_real_out_of_memory():
    """Under a 3 GiB budget a group of 8 (8 GiB) and of 4 run out of memory; groups of 2 fit. Nothing fails."""
    packing.release_cached_memory()
    total = torch.cuda.mem_get_info()[1]

    def train_group(group):
        t = torch.empty(len(group) * GIB, dtype=torch.uint8, device="cuda")
        t.fill_(1)
        return len(group)
    limit = packing.StackLimit(8, "cuda")
    try:
        torch.cuda.set_per_process_memory_fraction(3 * GIB / total)
        got = list(packing.halve_on_oom(train_group, list(range(8)), limit))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        packing.release_cached_memory()
    assert [g for g, _ in got] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert limit.size == 2 and [e["group"] for e in limit.events] == [8, 4]
