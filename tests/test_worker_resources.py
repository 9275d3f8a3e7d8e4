"""Device and stack size are resolved on the worker, from the GPU Ray gave it (not on the driver).

The bug this guards: on the CPU head that cluster.yaml describes, `--pack-size auto` fell back to the CPU
pack of 5 (so GPU workers never stacked networks unless the user passed `--pack-size`), and
`--device cuda` was refused on that head. Here a GPU-less driver plans GPU trials, and a two-node
cluster (one CPU worker, one worker that declares a GPU; no GPU on this machine) runs a trainable that
reports what `sweeps.trainable.worker_setup` -- what train_pack uses -- would do with its pack. On the GPU
node the probe shows torch a CUDA device of FREE bytes, since this machine has none.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest

import cluster_harness as H
from imbalance_core import packing
from sweeps.plan import parse_options, plan_sweep

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
FREE = 24 * 2 ** 30                   # what the probe's fake GPU reports free (an A10G's 24 GiB)


def probe(config: dict) -> None:
    """A trainable: report what this worker would train its pack on, and how many networks at once."""
    import ray
    import torch
    from ray import tune

    from imbalance_core.trial import TrialConfig
    from sweeps.trainable import worker_setup
    if ray.get_gpu_ids():             # this node declares a GPU but has none: let torch see one
        torch.cuda.is_available = lambda: True
        torch.cuda.device_count = lambda: 1
        torch.cuda.mem_get_info = lambda device=None: (FREE, FREE)
    configs = [TrialConfig.from_dict(d) for d in config["pack"]]
    tune.report({**worker_setup(configs), "n": len(configs), "node": ray.get_runtime_context().get_node_id()})


def gpu_plan(tmp_path, *extra):
    return plan_sweep(parse_options(["--preset", "mnist", "--data-dir", str(DATA), "--rho", "10", "100",
                                     "--repetitions", "2", "--gpus-per-trial", "1", "--address", "auto",
                                     "--storage-path", str(tmp_path), *extra]))


def test_a_gpu_less_driver_plans_gpu_trials_larger_than_the_cpu_pack(tmp_path):
    plan = gpu_plan(tmp_path, "--device", "cuda")       # --device cuda is no longer refused here
    sizes = [len(p) for p in plan.packs]
    assert max(sizes) > packing.CPU_PACK and max(sizes) <= packing.MAX_STACK
    assert sum(sizes) == plan.n_networks and "each worker stacks" in plan.pack_size
    assert all(c.device == "cuda" for p in plan.packs for c in p)
    # --gpu-memory-gb still sizes them for a GPU of that memory
    small = gpu_plan(tmp_path, "--gpu-memory-gb", "0.2")
    assert max(len(p) for p in small.packs) == packing.stack_size("lenet5", 64, 0.2 * 2 ** 30)


def test_the_gpu_worker_stacks_its_pack_and_the_cpu_worker_does_not(tmp_path):
    import ray
    from ray import cloudpickle, tune
    plan = gpu_plan(tmp_path)
    pack = max(plan.packs, key=len)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])     # the workers do not import tests/
    with H.ray_test_env("rwr_") as tmp:
        cluster = H.multinode_cluster(os.path.join(tmp, "ray"))
        try:
            cpu_node = cluster.add_node(num_cpus=1, num_gpus=0).node_id
            gpu_node = cluster.add_node(num_cpus=1, num_gpus=1).node_id
            ray.init(address=cluster.address,
                     job_config=ray.job_config.JobConfig(code_search_path=[str(REPO)]))
            seen = {}
            for name, resources in (("gpu", {"cpu": 1, "gpu": 1}), ("cpu", {"cpu": 1})):
                grid = tune.Tuner(tune.with_resources(probe, resources),
                                  param_space={"pack": [dataclasses.asdict(c) for c in pack]},
                                  run_config=tune.RunConfig(name=f"probe-{name}", storage_path=str(tmp_path / "ray"),
                                                            verbose=0)).fit()
                assert not grid.errors, grid.errors
                seen[name] = grid[0].metrics
        finally:
            ray.shutdown()
            leftovers = H.stop_multinode(cluster)
    assert not leftovers
    g, c = seen["gpu"], seen["cpu"]
    print(f"\n[worker resources] pack of {len(pack)}: GPU worker {g['device']} x{g['stack']}, "
          f"CPU worker {c['device']} x{c['stack']}")
    assert g["node"] == gpu_node and g["gpu_ids"] and g["device"] == "cuda"
    assert g["stack"] == min(len(pack), packing.stack_size("lenet5", 64, FREE)) > packing.CPU_PACK
    # a trial given no GPU trains one network at a time, on whichever node Ray put it (either has a CPU)
    assert c["node"] in (cpu_node, gpu_node) and c["gpu_ids"] == [] and c["device"] == "cpu" and c["stack"] == 1
    assert g["n"] == c["n"] == len(pack)


@pytest.mark.parametrize("n, stack, groups", [(7, 1, 7), (7, 3, 3), (7, 7, 1), (7, 256, 1)])
def test_run_trials_trains_a_pack_in_groups_of_the_stack_size(n, stack, groups):
    g = [group for group, _ in packing.halve_on_oom(lambda group: None, list(range(n)), stack)]
    assert len(g) == groups and sorted(sum(g, [])) == list(range(n)) and max(map(len, g)) <= stack
