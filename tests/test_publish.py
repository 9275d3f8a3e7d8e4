"""Published pages travel (issue 25): a page's store opened from any folder regenerates the page, holds no
absolute machine path, and a sweep resumed into it knows its networks whatever folder the data sat in."""
from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from imbalance_core import datasets as D
from imbalance_core.trial import TrialConfig
from sweeps import findings, plan, report
from sweeps.packs import pack
from sweeps.publish import BLOCK, _old_key, absolute_paths, make_portable, regenerate, relative_location
from sweeps.tracking import Tracker, trial_key
from sweeps.rehearsal import synthetic_result

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT.parent / "shared" / "data").resolve()
SWEEP = "page"


def _configs(data_dir=None, dataset="mnist-sample", seeds=(0, 1)) -> list[TrialConfig]:
    return [TrialConfig(dataset=dataset, data_dir=data_dir, imbalance="step", rho=rho, mu=0.5, method=m, seed=s,
                        iterations=50)
            for rho in (10.0, 100.0) for s in seeds for m in ("baseline", "ros", "rus")]


def _log(folder: Path, configs) -> Tracker:
    tracker = Tracker(f"sqlite:///{folder / 'mlflow.db'}", SWEEP)
    for c in configs:
        assert tracker.log_network(c, synthetic_result(c, 0.0), "p0")
    return tracker


def _page(folder: Path) -> dict[str, str]:
    """Regenerate the page from its own store (report and findings) and return its text files."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    report.build_report(uri, SWEEP, folder)
    assert findings.main(["--tracking-uri", uri, "--name", SWEEP, "--out", str(folder / "findings.md")]) == 0
    return {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.suffix in (".md", ".csv")}


@pytest.mark.slow
def test_a_portable_page_regenerates_identically_from_another_folder_and_takes_new_runs(tmp_path):
    a = tmp_path / "clone-a" / "docs" / "results" / SWEEP
    a.mkdir(parents=True)
    _log(a, _configs())
    sql = sqlite3.connect(a / "mlflow.db")
    assert sql.execute("SELECT artifact_uri FROM runs LIMIT 1").fetchone()[0].startswith("file:///")
    sql.close()
    assert any("mlflow.db" in line for line in absolute_paths(a))        # as a sweep writes it: absolute
    make_portable(a)
    first = _page(a)
    assert absolute_paths(a) == [], absolute_paths(a)
    assert "sqlite:///mlflow.db (relative to this folder)" in first["results.md"]

    b = tmp_path / "elsewhere" / "deeper" / SWEEP
    shutil.copytree(a, b)
    shutil.rmtree(a)                                                    # nothing may still point there
    assert _page(b) == first                                            # every md and csv, byte for byte
    assert absolute_paths(b) == []

    # A sweep resumed into the moved store: its artifacts land beside the store, its locations stay relative.
    tracker = Tracker(f"sqlite:///{b / 'mlflow.db'}", SWEEP)
    extra = TrialConfig(dataset="mnist-sample", imbalance="step", rho=10.0, mu=0.5, method="ros", seed=2, iterations=50)
    assert tracker.log_network(extra, synthetic_result(extra, 0.0), "p1")
    run = tracker.client.search_runs([tracker.experiment_id], f"tags.trial_key = '{trial_key(extra, SWEEP)}'")[0]
    assert run.info.artifact_uri.startswith("mlartifacts/")
    assert json.loads((b / run.info.artifact_uri / "result.json").read_text())["config"] == extra.identity()
    assert absolute_paths(b) == []


def test_the_same_network_read_from_another_folder_is_the_same_network(tmp_path):
    """The trial key, params and result.json name the data by its digest, not its folder."""
    here = TrialConfig(dataset="mnist", data_dir=str(SHARED_DATA), seed=3)
    moved = dataclasses.replace(here, data_dir="/elsewhere/data")
    assert trial_key(here, "s") == trial_key(moved, "s") != trial_key(dataclasses.replace(here, seed=4), "s")
    assert "data_dir" not in here.identity() and here.identity() == moved.identity()
    tracker = _log(tmp_path, [dataclasses.replace(here, iterations=50)])
    run = tracker.client.search_runs([tracker.experiment_id])[0]
    assert "data_dir" not in run.data.params
    assert run.data.params["data_digest"] == D.digest(D.load_dataset("mnist", SHARED_DATA))
    digests = {D.digest(D.load_dataset("mnist", SHARED_DATA)), D.digest(D.load_dataset("mnist-sample"))}
    assert len(digests) == 2 and all(len(d) == 64 for d in digests)


def _age(folder: Path, configs: list[TrialConfig], data_dir: str) -> None:
    """Turn a store into one written before the digest: data_dir params, keys computed with data_dir,
    dataset sources and result.json configs naming the folder (artifact locations are absolute as logged)."""
    by_key = {trial_key(c, SWEEP): dataclasses.replace(c, data_dir=data_dir) for c in configs}
    sql = sqlite3.connect(folder / "mlflow.db")
    with sql:
        for run_id, uri, key in sql.execute("SELECT runs.run_uuid, artifact_uri, value FROM runs JOIN tags ON "
                                            "tags.run_uuid = runs.run_uuid AND key = 'trial_key'").fetchall():
            sql.execute("DELETE FROM params WHERE run_uuid = ? AND key = 'data_digest'", (run_id,))
            sql.execute("INSERT INTO params (key, value, run_uuid) VALUES ('data_dir', ?, ?)", (data_dir, run_id))
            sql.execute("UPDATE tags SET value = ? WHERE run_uuid = ? AND key = 'trial_key'",
                        (_old_key(by_key[key], SWEEP), run_id))
            path = Path(uri.removeprefix("file://")) / "result.json"
            doc = json.loads(path.read_text())
            doc["config"]["data_dir"] = data_dir
            del doc["data_digest"]
            path.write_text(json.dumps(doc))
        for uuid, source in sql.execute("SELECT dataset_uuid, dataset_source FROM datasets").fetchall():
            doc = json.loads(source)
            del doc["data_digest"]
            sql.execute("UPDATE datasets SET dataset_source = ? WHERE dataset_uuid = ?",
                        (json.dumps({"uri": Path(data_dir).as_uri(), **doc}), uuid))
    sql.close()


def test_a_store_from_before_the_digest_is_rekeyed_after_its_keys_are_checked(tmp_path):
    configs = _configs(str(SHARED_DATA), "mnist", seeds=(0,))[:2]
    _log(tmp_path, configs)
    _age(tmp_path, configs, str(SHARED_DATA))
    snapshot = sqlite3.connect(":memory:")
    with sqlite3.connect(tmp_path / "mlflow.db") as live:
        live.backup(snapshot)

    # a run whose params do not reproduce its key is refused, and nothing of the store changes
    sql = sqlite3.connect(tmp_path / "mlflow.db")
    with sql:
        sql.execute("UPDATE params SET value = '7' WHERE key = 'seed' AND run_uuid = "
                    "(SELECT run_uuid FROM runs LIMIT 1)")
    sql.close()
    with pytest.raises(ValueError, match="do not reproduce its trial_key"):
        make_portable(tmp_path, str(SHARED_DATA))
    sql = sqlite3.connect(tmp_path / "mlflow.db")
    assert sql.execute("SELECT count(*) FROM params WHERE key = 'data_dir'").fetchone()[0] == 2
    sql.close()

    with sqlite3.connect(tmp_path / "mlflow.db") as live:
        snapshot.backup(live)
    counts = make_portable(tmp_path, str(SHARED_DATA))
    assert counts["runs_rekeyed"] == 2 and counts["result_json"] == 2 and counts["sources"] >= 1
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", SWEEP)
    assert tracker.existing_keys() == {trial_key(c, SWEEP) for c in configs}      # a resumed sweep knows them
    digest = D.digest(D.load_dataset("mnist", SHARED_DATA))
    for run in tracker.client.search_runs([tracker.experiment_id]):
        assert "data_dir" not in run.data.params and run.data.params["data_digest"] == digest
        doc = json.loads((tmp_path / run.info.artifact_uri / "result.json").read_text())
        assert "data_dir" not in doc["config"] and doc["data_digest"] == digest
    assert absolute_paths(tmp_path) == []
    assert make_portable(tmp_path, str(SHARED_DATA))["runs_rekeyed"] == 0           # idempotent


def test_relative_location_keeps_the_tail_under_the_page_and_refuses_a_foreign_one():
    assert relative_location("file:///x/y/page/mlartifacts/s/abc/artifacts") == "mlartifacts/s/abc/artifacts"
    assert relative_location("/x/y/mlruns/0") == "mlruns/0"
    assert relative_location("mlartifacts/s") == "mlartifacts/s"
    with pytest.raises(ValueError, match="neither under mlartifacts/ nor mlruns/"):
        relative_location("file:///x/y/somewhere")


def test_a_new_sweep_leaves_out_the_networks_its_store_holds(tmp_path):
    configs = _configs()
    tracker = _log(tmp_path, configs[:4])
    p = plan.Plan(SWEEP, tmp_path / "ray", tracker.uri, pack(configs, 3, whole_groups=True), "3", 4, len(configs), [])
    assert plan.logged_keys(tracker.uri, SWEEP) == {trial_key(c, SWEEP) for c in configs[:4]}
    assert plan.logged_keys(tracker.uri, "another-sweep") is None
    assert plan.logged_keys(f"sqlite:///{tmp_path / 'absent.db'}", SWEEP) is None
    left, dropped = plan.without_logged(p, plan.logged_keys(tracker.uri, SWEEP))
    assert dropped == 4 and left.n_networks == len(configs) - 4
    assert [c for pk in left.packs for c in pk] == configs[4:]                       # order kept
    assert left.n_trials == len(left.packs) == 3 and all(left.packs)                # the emptied pack is gone


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(p.parent.name for p in (ROOT / "docs" / "results").glob("*/page.json")))
def test_a_published_page_says_exactly_what_its_store_says(page, tmp_path):
    """Regenerated from its own store in another folder, every text file of a published page (its tables,
    ranked comparisons, findings and its README's generated blocks: status, findings, headline) comes out byte
    for byte as committed: no number on it is stale or copied by hand."""
    src = ROOT / "docs" / "results" / page
    dst = tmp_path / "another" / page
    shutil.copytree(src, dst)
    readme = dst / "README.md"
    stale = readme.read_text()
    for block in {m.group(2) for m in BLOCK.finditer(stale)}:   # each generated block made stale: rewritten
        begin = stale.index(f"<!-- BEGIN generated {block}") + len("<!-- BEGIN generated ")
        stale = stale[:begin] + stale[begin:].replace("-->\n", "-->\nstale 0 of 9\n", 1)
    readme.write_text(stale)
    (dst / "findings.md").write_text("stale\n")
    regenerate(dst)

    def texts(folder: Path) -> dict[str, str]:
        return {f.name: f.read_text() for f in sorted(folder.iterdir()) if f.suffix in (".md", ".csv", ".json")}
    assert texts(dst) == texts(src)
    assert absolute_paths(dst) == []


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs" / "results").iterdir() if p.is_dir()))
def test_published_pages_hold_no_absolute_machine_path(page):
    assert absolute_paths(ROOT / "docs" / "results" / page) == []


def test_a_snapshot_of_a_live_store_is_a_portable_page_that_grows_with_it(tmp_path):
    from sweeps.publish import snapshot
    live, page = tmp_path / "live", tmp_path / "repo" / "page"
    live.mkdir()
    configs = _configs()
    tracker = _log(live, configs[:3])                        # the sweep's store, still open for writing
    assert snapshot(live, page)["artifact_folders_copied"] == 3
    assert Tracker(f"sqlite:///{page / 'mlflow.db'}", SWEEP).existing_keys() == {trial_key(c, SWEEP) for c in configs[:3]}
    assert absolute_paths(page) == []
    assert tracker.log_network(configs[3], synthetic_result(configs[3], 0.0), "p1")
    assert snapshot(live, page)["artifact_folders_copied"] == 1
    copy = Tracker(f"sqlite:///{page / 'mlflow.db'}", SWEEP)
    assert copy.existing_keys() == {trial_key(c, SWEEP) for c in configs[:4]}
    for run in copy.client.search_runs([copy.experiment_id]):
        assert (page / run.info.artifact_uri / "result.json").is_file()
    assert absolute_paths(page) == []


def test_beyond_shares_its_paper_regimes_with_mnist_paper_network_for_network():
    """docs/results/beyond's five paper regimes at step rho 1000 mu 0.5 are mnist-paper's networks (same config,
    same seed, bit-identical metrics): the pages show them as shared, never as extra seeds."""
    import csv

    def networks(page):
        rows = csv.DictReader((ROOT / "docs" / "results" / page / "networks.csv").open())
        return {(r["tags.cell"], r["params.method"], r["params.level"], r["params.seed"]): r for r in rows}
    beyond, paper = networks("beyond"), networks("mnist-paper")
    shared = sorted(k for k in beyond if k[0] == "mnist/step/rho1000/mu0.5" and k[1] in
                    ("baseline", "ros", "rus", "two-phase-ros", "two-phase-rus"))
    assert len(shared) == 15 and set(shared) <= set(paper)
    for k in shared:
        assert {m: beyond[k][m] for m in beyond[k] if m.startswith("metrics.") and "seconds" not in m
                and "per_second" not in m} == {m: paper[k][m] for m in beyond[k] if m.startswith("metrics.")
                                               and "seconds" not in m and "per_second" not in m}, k
