"""GPU-only checks (skipped where CUDA is absent: the only skips of the suite). Run by benchmarks/gpu_check.sh."""
import numpy as np
import pytest
import torch

from imbalance_core.trial import TrialConfig, run_trial, run_trials

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
