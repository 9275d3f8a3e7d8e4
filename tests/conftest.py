"""Shared pytest fixtures and helpers."""
import json
import os
from pathlib import Path

import pytest

# ../shared/data beside the repository; IMBALANCE_SHARED_DATA points elsewhere (benchmarks/gpu_check.sh)
SHARED_DATA = Path(os.environ.get('IMBALANCE_SHARED_DATA') or Path(__file__).resolve().parents[1].parent / 'shared' / 'data')


@pytest.fixture(scope='session')
def shared_data() -> Path:
    """The real datasets in ../shared/data (never copied into the repository)."""
    assert SHARED_DATA.is_dir(), f'shared data not found at {SHARED_DATA} (tests read ../shared/data)'
    return SHARED_DATA


def final_reports(sweep_dir: Path) -> dict[str, int]:
    """Final reports (a pack's results, in its checkpoint) per trial folder of a sweep: Tune appends one line to
    result.json per `tune.report`; a pack also reports its progress (with a checkpoint) after each finished
    network."""
    return {p.parent.name: sum(json.loads(ln).get("final", False) for ln in p.read_text().splitlines() if ln.strip())
            for p in Path(sweep_dir).glob("train_pack_*/result.json")}


# --------------------------------------------------------------------------- the unit route and its complement
#
# `bash scripts/test.sh --unit` runs `pytest -m "not integration"`: every test that needs no Ray cluster, no
# server (PostgreSQL, MLflow's), no browser and no long training, in under 2 minutes on 2 cores. The rest is
# marked `integration` here, in one place: whole modules, tests that use a fixture that starts Ray or a server,
# and tests marked `slow` (a real dataset through a real model, a subprocess per node).
INTEGRATION_MODULES = frozenset({
    "test_cluster_resume.py", "test_logging_process.py",
    "test_mlflow_ui.py", "test_local_ray_loopback.py", "test_worker_resources.py", "test_rehearsal.py",
    "test_gpu_check.py"})
INTEGRATION_FIXTURES = frozenset({"ray_local", "ray_env", "cluster", "autoscaling_cluster", "pg",
                                  "old_head_server"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (item.path.name in INTEGRATION_MODULES or INTEGRATION_FIXTURES & set(item.fixturenames)
                or item.get_closest_marker("slow")):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray of 2 CPUs for a module's sweeps, its files in a short temp dir of its own (Ray's socket
    paths are length-limited); shut down after the module."""
    import shutil
    import tempfile

    import ray

    from sweeps import compat
    temp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")
    root = str(Path(__file__).resolve().parents[1])
    compat.init_local_ray(num_cpus=2, num_gpus=0, include_dashboard=False, temp_dir=temp,
                          job_config=ray.job_config.JobConfig(code_search_path=[root]))
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_env():
    """Local test clusters (tests/cluster_harness.py): token auth with the local default token, Ray's files in
    a temp dir of our own (cluster_harness.ray_test_env)."""
    import cluster_harness as H
    with H.ray_test_env("rct_") as tmp:
        yield tmp


@pytest.fixture
def no_ray(monkeypatch):
    """Ray must not start: for bad input, refused before anything runs."""
    from sweeps import full_grid

    def refuse(a):
        raise AssertionError("Ray must not start on bad input")
    monkeypatch.setattr(full_grid, "_init_ray", refuse)
