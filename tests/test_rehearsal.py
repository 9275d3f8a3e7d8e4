"""`--rehearse`: the whole plan through the real Tune and MLflow path, without training.

a) a synthetic result has exactly the shape of a real one (every key, type, list and matrix), for every
   kind of method (one phase, two phases on cached features, a cosine head, a re-initialised head);
b) a small rehearsal (184 networks, two logging processes) logs every network to MLflow once, marked as a
   rehearsal (its own experiment, a tag), with the PNGs its trials drew (the driver draws none), and the
   report reads them back; resuming it logs nothing twice.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from imbalance_core.trial import TrialConfig, run_trials
from sweeps import full_grid, grids
from sweeps.run_figures import network_figures
from sweeps.report import build_report
from sweeps.rehearsal import rehearse_trials
from sweeps.tracking import REHEARSAL_TAG, trial_key

METHODS = ["baseline", "ros", "two-phase-ros", "rus", "two-phase-rus", "crt", "ldam-drw", "cb-focal", "la-loss"]


def _shape(v):
    """The shape of a result value: its type, and for lists their lengths all the way down."""
    if isinstance(v, list):
        return ("list", len(v), tuple(_shape(x) for x in v))
    if isinstance(v, (bool, np.bool_)):
        return "bool"
    if isinstance(v, (int, np.integer)):
        return "int"
    if isinstance(v, (float, np.floating)):
        return "float"
    return type(v).__name__


def test_synthetic_result_has_the_shape_of_a_real_one():
    configs = [TrialConfig(dataset="mnist-sample", imbalance="step", rho=10, mu=0.5, method=m, seed=0,
                           iterations=2, device="cpu") for m in METHODS]
    configs.append(TrialConfig(dataset="mnist-sample", imbalance="step", rho=10, mu=0.5, method="partial-rus",
                               level=5, seed=0, iterations=2, device="cpu"))
    real = [r.to_dict() for r in run_trials(configs)]
    fake = [r.to_dict() for r in rehearse_trials(configs)]
    for c, r, f in zip(configs, real, fake):
        assert sorted(f) == sorted(r), (c.method, set(f) ^ set(r))
        for k in r:
            if k in ("device", "loader"):          # says "rehearsal" in a rehearsal, by design
                assert f[k] == "rehearsal"
                continue
            assert _shape(f[k]) == _shape(r[k]), (c.method, k)
        # what does not depend on training is the real thing
        for k in ("train_examples", "subset_digest", "class_counts", "sampled_counts", "epoch_examples",
                  "iterations", "finetune_iterations", "finetune_on", "batch_size", "base_lr", "model",
                  "test_examples", "pack_size"):
            assert f[k] == r[k], (c.method, k)


# one trial slot, as benchmarks/rehearsal.py runs it (a second slot only churns Ray actors: README, "The driver at scale")
ARGS = ["--preset", "mnist", "--datasets", "mnist-sample", "--rho", "10", "20", "50", "100", "--mu", "0.5", "0.9",
        "--repetitions", "2", "--log-processes", "2", "--max-concurrent", "1", "--rehearse", "--name", "small"]


def test_small_rehearsal_logs_every_network_once_and_the_report_reads_them(tmp_path, capsys):
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ARGS + ["--tracking-uri", uri, "--storage-path", str(tmp_path / "ray")]
    expected = grids.expand(grids.PRESETS["mnist"], grids.Overrides(
        datasets=("mnist-sample",), rho=(10.0, 20.0, 50.0, 100.0), mu=(0.5, 0.9), repetitions=2))
    assert 150 <= len(expected) <= 400

    t0 = time.monotonic()
    assert full_grid.main(args) == 0
    wall = time.monotonic() - t0
    out = capsys.readouterr().out
    assert "rehearsal driver: wall" in out

    client = MlflowClient(tracking_uri=uri)
    assert client.get_experiment_by_name("small") is None          # the real sweep's name stays free
    exp = client.get_experiment_by_name("small-rehearsal")
    assert exp.tags.get(REHEARSAL_TAG) == "true"
    runs = client.search_runs([exp.experiment_id], max_results=10_000)
    keys = [r.data.tags["trial_key"] for r in runs]
    assert len(keys) == len(set(keys)) == len(expected)
    assert set(keys) == {trial_key(c, "small-rehearsal") for c in expected}
    assert all(r.data.tags.get(REHEARSAL_TAG) == "true" and r.info.status == "FINISHED" for r in runs)
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} >= {
        "result.json", "confusion_matrix.png", "per_class_recall.png"}
    # the PNGs were drawn by the trials (in their final checkpoints), none on the driver, and they are
    # exactly what the driver would have drawn from the network's result
    driver = re.findall(r"rehearsal driver: .* \+ figures ([\d.]+) s .*; 2 logging processes: CPU ([\d.]+) s "
                        r"\(figures ([\d.]+) s\)", out)[-1]
    assert float(driver[0]) == float(driver[2]) == 0.0 and float(driver[1]) > 0, driver
    local = Path(client.download_artifacts(runs[0].info.run_id, "", str(tmp_path / "artifacts")))
    redrawn = network_figures(tmp_path / "redrawn", json.loads((local / "result.json").read_text()))
    for name, path in redrawn.items():
        assert (local / name).read_bytes() == path.read_bytes(), name
    print(f"\n[rehearsal] {len(expected)} networks in {wall:.0f} s ({len(expected) / wall:.1f} networks/s)")

    report = build_report(uri, "small-rehearsal", tmp_path / "report")
    assert report["n_runs"] == len(expected)
    methods = {(c.method, c.level, c.imbalance, c.rho, c.mu) for c in expected}
    assert report["n_groups"] == len(methods) and report["figures"]
    assert len(report["results_csv"].read_text().splitlines()) == 1 + len(methods)

    # resumed after it finished, with 20 runs gone (as if its driver had been killed before logging them):
    # nothing is trained again; the restored logger logs those 20 through its logging processes, with the
    # trials' own figures (none drawn on the driver), and nothing else
    gone = {r.data.tags["trial_key"] for r in runs[::len(runs) // 20][:20]}
    for r in runs:
        if r.data.tags["trial_key"] in gone:
            client.delete_run(r.info.run_id)
    assert full_grid.main(args[:-4] + ["--tracking-uri", uri, "--storage-path", str(tmp_path / "ray"),
                                       "--resume"]) == 0
    out = capsys.readouterr().out
    assert "reconciliation: logged 0 finished networks" in out and "networks missing from MLflow" in out
    driver = re.findall(r"rehearsal driver: .* \+ figures ([\d.]+) s .*; 2 logging processes: CPU ([\d.]+) s "
                        r"\(figures ([\d.]+) s\)", out)[-1]
    assert float(driver[0]) == float(driver[2]) == 0.0 and float(driver[1]) > 0, driver
    after = client.search_runs([exp.experiment_id], max_results=10_000)
    assert sorted(r.data.tags["trial_key"] for r in after) == sorted(keys)
    assert {r.info.run_id for r in after} >= {r.info.run_id for r in runs if r.data.tags["trial_key"] not in gone}


def test_a_rehearsal_sweep_has_its_own_name(tmp_path):
    from sweeps.plan import parse_options, plan_sweep
    plan = plan_sweep(parse_options(["--preset", "quick", "--rehearse", "--storage-path", str(tmp_path)]))
    assert plan.sweep == "quick-rehearsal" and plan.rehearsal
    assert plan.sweep_dir == Path(tmp_path).resolve() / "quick-rehearsal"
    assert not plan_sweep(parse_options(["--preset", "quick", "--storage-path", str(tmp_path)])).rehearsal
