"""sweeps/report.py against a fake sweep logged straight into an MLflow sqlite store (docs/SWEEP_CONTRACT.md)."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import statistics
import struct
import sys
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from sweeps import report  # noqa: E402

SWEEP = "fake-grid"
SEEDS = (0, 1, 2)
STEP_RHOS = (10.0, 100.0, 1000.0)
STEP_MUS = (0.1, 0.5)
LINEAR_RHOS = (10.0, 100.0)
METHODS = ("baseline", "ros", "rus")
PARTIAL_LEVELS = (10.0, 100.0)


# ------------------------------------------------------------------------------- the fake sweep

def fake_metrics(cfg: dict) -> dict:
    """Known, seed-dependent metric values (x100) for a network config."""
    m = {"baseline": 0.0, "ros": 1.0, "rus": -2.0, "two-phase-ros": 0.7, "two-phase-rus": -1.2,
         "partial-ros": 0.5, "partial-rus": -1.0}[cfg["method"]]
    lvl = 0.0 if cfg["level"] is None else 0.1 * math.log10(cfg["level"])
    spread = 0.37 * (1.0 + 0.2 * math.log10(cfg["rho"]) + cfg["mu"])     # std differs between cells
    auc = 99.0 - 1.5 * math.log10(cfg["rho"]) - 2.0 * cfg["mu"] + m + lvl + spread * cfg["seed"] ** 2
    acc = auc - 3.0 - 0.25 * cfg["seed"]
    return {"auc": auc, "accuracy": acc, "accuracy_thresholded": acc + 1.0 + 0.1 * cfg["seed"]}


def contract_config(dataset="mnist", imbalance="step", rho=10.0, mu=0.5, method="baseline", level=None,
                    seed=0, lr=None) -> dict:
    return {"dataset": dataset, "data_dir": "/data", "imbalance": imbalance, "rho": rho, "mu": mu,
            "method": method, "level": level, "seed": seed, "iterations": 200, "lr": lr,
            "batch_size": None, "n_per_class": None, "device": "cpu", "loader": "tensor"}


def run_name(c: dict) -> str:
    name = f"{c['dataset']}-{c['imbalance']}-rho{c['rho']:g}-mu{c['mu']:g}-{c['method']}"
    if c["level"] is not None:
        name += f"-L{c['level']:g}"
    if c["lr"] is not None:
        name += f"-lr{c['lr']:g}"
    return name + f"-s{c['seed']}"


def log_contract_run(client: MlflowClient, exp_id: str, sweep: str, cfg: dict, metrics: dict,
                     status: str = "FINISHED") -> str:
    """One run laid out as docs/SWEEP_CONTRACT.md says (params, tags, metrics)."""
    params = {k: str(v) for k, v in cfg.items()}
    params.update(model="lenet5", code_version="abc1234", base_lr="0.01", batch_size="64")
    key = hashlib.sha1(json.dumps({**cfg, "sweep": sweep}, sort_keys=True).encode()).hexdigest()
    tags = {"sweep": sweep, "method": cfg["method"], "pack_id": "p0", "trial_key": key,
            "cell": f"{cfg['dataset']}/{cfg['imbalance']}/rho{cfg['rho']:g}/mu{cfg['mu']:g}"}
    run = client.create_run(exp_id, run_name=run_name(cfg), tags=tags)
    all_metrics = {**metrics, "train_seconds": 1.0, "images_per_second": 1000.0, "final_loss": 0.1,
                   "train_examples": 1000, "epoch_examples": 1000,
                   **{f"recall_{c}": metrics["accuracy"] for c in range(10)},
                   **{f"recall_thresholded_{c}": metrics["accuracy_thresholded"] for c in range(10)}}
    client.log_batch(run.info.run_id,
                     metrics=[Metric(k, float(v), 0, 0) for k, v in all_metrics.items()],
                     params=[Param(k, v) for k, v in params.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def grid_configs() -> list[dict]:
    cfgs = []
    for s in SEEDS:
        for method in METHODS:
            for mu in STEP_MUS:
                for rho in STEP_RHOS:
                    cfgs.append(contract_config(imbalance="step", rho=rho, mu=mu, method=method, seed=s))
            for rho in LINEAR_RHOS:
                cfgs.append(contract_config(imbalance="linear", rho=rho, mu=0.5, method=method, seed=s))
        for method in ("partial-ros", "partial-rus"):
            for lv in PARTIAL_LEVELS:
                cfgs.append(contract_config(imbalance="step", rho=1000.0, mu=0.5, method=method, level=lv, seed=s))
    return cfgs


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(SWEEP, tags={"mlflow.experimentKind": "custom_model_development"})
    cfgs = grid_configs()
    for c in cfgs:
        log_contract_run(client, exp_id, SWEEP, c, fake_metrics(c))
    # runs the report must ignore: a FAILED and a RUNNING network, and another sweep's run
    bad = contract_config(rho=10.0, mu=0.1, method="baseline", seed=7)
    log_contract_run(client, exp_id, SWEEP, bad, {"auc": 1.0, "accuracy": 1.0, "accuracy_thresholded": 1.0},
                     status="FAILED")
    log_contract_run(client, exp_id, SWEEP, {**bad, "seed": 8},
                     {"auc": 2.0, "accuracy": 2.0, "accuracy_thresholded": 2.0}, status="RUNNING")
    # a second sweep with a single cell: every figure must be skipped
    tiny = client.create_experiment("tiny", tags={"mlflow.experimentKind": "custom_model_development"})
    tiny_cfgs = [contract_config(rho=10.0, mu=0.5, method=m, seed=s) for m in ("baseline", "ros") for s in (0, 1)]
    for c in tiny_cfgs:
        log_contract_run(client, tiny, "tiny", c, fake_metrics(c))
    return {"uri": uri, "configs": cfgs, "tiny_configs": tiny_cfgs}


# ----------------------------------------------------------------------------------------- tests

def expected_groups(cfgs: list[dict]) -> dict[tuple, dict]:
    """Mean / sample std per group, computed here independently of the report."""
    groups: dict[tuple, list[dict]] = {}
    for c in cfgs:
        groups.setdefault((c["imbalance"], c["rho"], c["mu"], c["method"], c["level"]), []).append(fake_metrics(c))
    out = {}
    for k, ms in groups.items():
        e = {"n": len(ms)}
        for m in ("auc", "accuracy", "accuracy_thresholded"):
            vals = [x[m] for x in ms]
            e[f"{m}_mean"] = sum(vals) / len(vals)
            e[f"{m}_std"] = statistics.stdev(vals)
        out[k] = e
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_png(path: Path, min_bytes: int = 5000, min_side: int = 200) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) >= min_bytes, f"{path} is only {len(data)} bytes"
    w, h = struct.unpack(">II", data[16:24])
    assert w >= min_side and h >= min_side, f"{path} is {w}x{h}"


def test_results_csv_matches_independent_stats(store, tmp_path):
    res = report.build_report(store["uri"], SWEEP, tmp_path / "out")
    cfgs = store["configs"]
    assert res["n_runs"] == len(cfgs)                       # FAILED / RUNNING runs are left out
    rows = read_csv(res["results_csv"])
    exp = expected_groups(cfgs)
    assert res["n_groups"] == len(rows) == len(exp)
    seen = set()
    for r in rows:
        assert r["dataset"] == "mnist" and r["lr"] == ""
        level = float(r["level"]) if r["level"] else None
        key = (r["imbalance"], float(r["rho"]), float(r["mu"]), r["method"], level)
        assert key in exp, key
        seen.add(key)
        e = exp[key]
        assert int(r["n"]) == e["n"] == len(SEEDS)
        for col in ("auc_mean", "auc_std", "accuracy_mean", "accuracy_std",
                    "accuracy_thresholded_mean", "accuracy_thresholded_std"):
            assert float(r[col]) == pytest.approx(e[col], rel=1e-9, abs=1e-9), (key, col)
    assert seen == set(exp)
    # spot check one group by hand: step, rho 10, mu 0.1, baseline
    aucs = [99.0 - 1.5 - 0.2 + 0.37 * 1.3 * s ** 2 for s in SEEDS]
    row = next(r for r in rows if (r["imbalance"], r["rho"], r["mu"], r["method"]) == ("step", "10.0", "0.1", "baseline"))
    assert float(row["auc_mean"]) == pytest.approx(statistics.mean(aucs))
    assert float(row["auc_std"]) == pytest.approx(statistics.stdev(aucs))
    assert float(row["auc_min"]) == pytest.approx(min(aucs)) and float(row["auc_max"]) == pytest.approx(max(aucs))


def test_figures_markdown_and_nothing_skipped(store, tmp_path):
    res = report.build_report(store["uri"], SWEEP, tmp_path / "out")
    names = sorted(p.name for p in res["figures"])
    assert names == sorted(["auc_vs_rho_mnist.png", "heatmap_auc_mnist.png",
                            "accuracy_vs_rho_mnist.png", "partial_sampling_mnist.png"])
    assert list(res["skipped"]) == ["ranked_mnist.png"]          # too many cells to draw: ranked.md has them
    assert "see ranked.md" in res["skipped"]["ranked_mnist.png"]
    assert res["ranked_md"].read_text().count("\n## mnist: ") == len(STEP_MUS) * len(STEP_RHOS) + len(LINEAR_RHOS)
    for p in res["figures"]:
        assert Path(p).parent == tmp_path / "out"
        assert_png(p)
    md = Path(res["results_md"]).read_text()
    assert "| dataset | imbalance | rho | mu | method | level | lr | n | AUC | accuracy | acc +thr |" in md
    # the baseline / step / rho 10 / mu 0.1 row, formatted mean ± std
    e = expected_groups(store["configs"])[("step", 10.0, 0.1, "baseline", None)]
    assert f"| mnist | step | 10 | 0.1 | baseline | — | default | 3 | {e['auc_mean']:.2f} ± {e['auc_std']:.2f} |" in md
    assert "partial-ros | 10 |" in md
    for n in names:
        assert f"({n})" in md


def test_skipped_figures_are_reported(store, tmp_path):
    out = tmp_path / "tiny"
    res = report.build_report(store["uri"], "tiny", out)
    assert res["n_runs"] == len(store["tiny_configs"])
    assert res["figures"] == []
    assert set(res["skipped"]) == {"auc_vs_rho_mnist.png", "heatmap_auc_mnist.png",
                                   "accuracy_vs_rho_mnist.png", "partial_sampling_mnist.png", "ranked_mnist.png"}
    assert "2 mu" in res["skipped"]["heatmap_auc_mnist.png"]
    assert not list(out.glob("*.png"))
    md = (out / "results.md").read_text()
    assert "## Skipped figures" in md and "heatmap_auc_mnist.png" in md
    rows = read_csv(out / "results.csv")
    assert len(rows) == 2 and {r["n"] for r in rows} == {"2"}


def test_cli_writes_report_and_default_out(store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert report.main(["--tracking-uri", store["uri"], "--name", "tiny"]) == 0
    assert (tmp_path / "reports" / "tiny" / "results.csv").is_file()
    assert "skipped" in capsys.readouterr().out


def test_unknown_sweep_name(store, tmp_path, capsys):
    with pytest.raises(report.SweepNotFound) as ei:
        report.build_report(store["uri"], "no-such-sweep", tmp_path / "x")
    msg = str(ei.value)
    assert "no-such-sweep" in msg and SWEEP in msg and "tiny" in msg
    rc = report.main(["--tracking-uri", store["uri"], "--name", "no-such-sweep", "--out", str(tmp_path / "y")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no-such-sweep" in err and SWEEP in err and "tiny" in err
    assert not (tmp_path / "y").exists()


def test_learning_rates_are_rows_and_figures_take_the_best():
    """CIFAR-10 style: one row per base lr; the plotted point is the lr with the best mean AUC."""
    runs = [{"dataset": "cifar10", "imbalance": "step", "rho": 10.0, "mu": 0.5, "method": "baseline",
             "level": None, "lr": lr, "seed": s, "auc": auc + s, "accuracy": 80.0, "accuracy_thresholded": 81.0}
            for lr, auc in ((0.05, 90.0), (0.005, 95.0), (0.0005, 93.0)) for s in (0, 1)]
    rows = report.aggregate(runs)
    assert [(r["lr"], r["n"], r["auc_mean"]) for r in rows] == [(0.0005, 2, 93.5), (0.005, 2, 95.5), (0.05, 2, 90.5)]
    best = report._best_lr(rows)
    assert len(best) == 1 and best[0]["lr"] == 0.005


def test_a_new_method_spec_reaches_every_table_and_figure(tmp_path, monkeypatch):
    """Adding a method is adding one spec: a toy method registered in imbalance_core.methods (nothing else
    edited) gets its rows in the table and CSV, in registry order, and its label in the figures' legends."""
    from imbalance_core import methods as M
    monkeypatch.setitem(M.SPECS, "toy", M.MethodSpec("toy", (M.Phase("baseline", loss="la"),), "beyond",
                                                     params=(("tau", 1.0),), label="Toy method"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("toy-sweep")
    for s in SEEDS:
        for method in ("toy", "baseline", "ros"):
            for mu in STEP_MUS:
                for rho in STEP_RHOS:
                    c = contract_config(rho=rho, mu=mu, method=method, seed=s)
                    f = fake_metrics({**c, "method": "ros"}) if method == "toy" else fake_metrics(c)
                    log_contract_run(client, exp_id, "toy-sweep", c, {k: v + 0.5 * (method == "toy")
                                                                      for k, v in f.items()})
    from sweeps import figures
    legends: list[str] = []
    real_close = figures.plt.close

    def close(fig=None):
        for ax in getattr(fig, "axes", []):
            leg = ax.get_legend()
            legends.extend(t.get_text() for t in (leg.get_texts() if leg else []))
            legends.append(ax.get_title())
        real_close(fig)
    monkeypatch.setattr(figures.plt, "close", close)
    out = report.build_report(uri, "toy-sweep", tmp_path / "out")
    methods_in_table = [ln.split(" | ")[4] for ln in out["results_md"].read_text().splitlines()
                        if ln.startswith("| mnist")]
    assert methods_in_table[:3] == ["baseline", "ros", "toy"]                  # registry order: toy last
    assert methods_in_table.count("toy") == len(STEP_RHOS) * len(STEP_MUS)
    with open(out["results_csv"]) as f:
        assert sum(r["method"] == "toy" for r in csv.DictReader(f)) == len(STEP_RHOS) * len(STEP_MUS)
    assert {"auc_vs_rho_mnist.png", "heatmap_auc_mnist.png", "accuracy_vs_rho_mnist.png"} <= {
        Path(p).name for p in out["figures"]}
    # the AUC figure's legends (one per panel) and the heatmap's panel title carry the spec's label
    assert legends.count("Toy method") >= len(STEP_MUS) + 1, legends


def test_networks_csv_has_one_row_per_network_with_every_param_and_metric(store, tmp_path):
    res = report.build_report(store["uri"], SWEEP, tmp_path / "out")
    rows = read_csv(res["networks_csv"])
    client = MlflowClient(tracking_uri=store["uri"])
    exp = client.get_experiment_by_name(SWEEP)
    finished = [r for r in client.search_runs([exp.experiment_id], max_results=10_000) if r.info.status == "FINISHED"]
    assert len(rows) == len(finished) == res["n_runs"]
    assert sorted(r["run_id"] for r in rows) == sorted(r.info.run_id for r in finished)
    one = next(r for r in finished if r.info.run_id == rows[0]["run_id"])
    row = rows[0]
    for k, v in one.data.params.items():
        assert row[f"params.{k}"] == v, k
    for k, v in one.data.metrics.items():
        assert float(row[f"metrics.{k}"]) == pytest.approx(v), k
    assert row["tags.trial_key"] == one.data.tags["trial_key"]
    assert [r["tags.mlflow.runName"] for r in rows] == sorted(r["tags.mlflow.runName"] for r in rows)


def test_results_csv_has_the_95_percent_interval_of_each_mean(store, tmp_path):
    res = report.build_report(store["uri"], SWEEP, tmp_path / "out")
    row = next(r for r in read_csv(res["results_csv"]) if r["method"] == "baseline" and r["imbalance"] == "step"
               and float(r["rho"]) == 10 and float(r["mu"]) == 0.1)
    aucs = [fake_metrics(contract_config(rho=10.0, mu=0.1, seed=s))["auc"] for s in SEEDS]
    # t_{0.975, 2} = 4.302652729...: the half-width of the 95% interval of a mean of 3 runs
    assert float(row["auc_ci95"]) == pytest.approx(4.302652729 * statistics.stdev(aucs) / 3 ** 0.5, rel=1e-6)


SEED_EFFECT = (-3.0, 0.0, 3.0)         # shared by every method of the cell: the subset draw of that seed


def ranked_runs(missing=()):
    """One cell, five methods x 3 seeds; every network = its method's mean + the seed's shared effect + its own
    small deviation. `missing`: (method, seed) pairs left out."""
    own = {"la-loss": (0.01, -0.02, 0.01), "ros": (0.02, 0.0, -0.02), "cb-focal": (0.0, 0.01, -0.01),
           "rus": (1.5, -2.0, 0.5), "baseline": (0.1, -0.1, 0.0)}
    means = {"la-loss": 97.0, "ros": 96.5, "cb-focal": 96.95, "rus": 96.3, "baseline": 91.0}
    runs = []
    for method, m in means.items():
        for seed, (e, o) in enumerate(zip(SEED_EFFECT, own[method])):
            if (method, seed) in missing:
                continue
            auc = m + e + o
            runs.append({"dataset": "mnist", "imbalance": "step", "rho": 1000.0, "mu": 0.5, "method": method,
                         "level": None, "lr": None, "seed": float(seed), "auc": auc, "accuracy": auc - 20,
                         "accuracy_thresholded": auc - 5, "accuracy_posthoc_best": auc - 4})
    return runs


def test_methods_ranked_are_compared_with_the_best_paired_by_seed():
    """ranked.md of one cell: methods by mean AUC, each mean with its 95% interval, and each method's difference
    from the best paired by seed. A +-3-point seed effect makes every mean's interval ~+-7.5 points wide (they all
    overlap, Welch resolves nothing), but ROS's per-seed difference from LA loss is a steady -0.5: below it."""
    runs = ranked_runs()
    md = report.ranked_markdown("s", runs)
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert [ln.split(" | ")[1] for ln in table] == ["LA loss", "CB focal", "ROS", "RUS", "baseline"]   # by mean AUC
    la = [r["auc"] for r in runs if r["method"] == "la-loss"]
    half = 4.302652729749462 * statistics.stdev(la) / 3 ** 0.5      # t(0.975, 2) * sd / sqrt(n), sd ~ 3
    assert 7.3 < half < 7.6
    assert f"| 1 | LA loss | 3 | {statistics.mean(la):.2f} ± {half:.2f} | best |" in md
    ros = [r for r in runs if r["method"] == "ros"]
    lal = [r for r in runs if r["method"] == "la-loss"]
    assert report.welch(ros, lal, "auc").outcome == "?"                     # unpaired: not resolved
    d = report.paired(ros, lal, "auc")
    assert d.outcome == "<" and d.ci[1] < 0
    assert f"| {d.interval_text()} below |" in table[2]
    assert " tie |" in table[1]                                               # CB focal: within +-0.3 of LA loss
    assert " not resolved |" in table[3]                                      # RUS: its own noise is large
    assert ("- ROC AUC: best LA loss; tied with it: CB focal; below it: ROS, baseline; not resolved: RUS." in md)
    assert "paired by seed" in md and "Welch" not in md


def test_a_seed_missing_for_one_method_is_left_out_and_named():
    md = report.ranked_markdown("s", ranked_runs(missing={("ros", 2)}))
    ros_row = next(ln for ln in md.splitlines() if ln.startswith("| ") and " | ROS | " in ln)
    assert "| ROS | 2 |" in ros_row and "(n = 2 pairs; seed 2 missing for ros)" in ros_row


def _drawn_x(fig, panels):
    """Every x of the error bars drawn in the given panel columns of each row (LineCollections of errorbar)."""
    xs = []
    n_cols = 2 * len(figures_mod().RANKED_METRICS)
    for i, ax in enumerate(fig.axes):
        if i % n_cols in panels:
            for coll in ax.collections:
                for seg in getattr(coll, "get_segments", lambda: [])():
                    xs += [float(p[0]) for p in seg]
            xs += [float(x) for line in ax.lines for x in line.get_xdata()]
    return xs


def figures_mod():
    from sweeps import figures
    return figures


def test_ranked_figure_draws_paired_differences_and_never_past_100(tmp_path, monkeypatch):
    """The ranked figure: per metric a panel of means with their 95% intervals, clipped at 100 (a mean of 99.9
    with a +-0.6 interval is drawn up to 100, not 100.5), and a panel of paired differences from the best."""
    figures = figures_mod()
    runs = ranked_runs()
    for r in runs:                                   # ROS near the ceiling, with a wide interval
        if r["method"] == "ros":
            r["auc"] = 99.9 + {0.0: -0.25, 1.0: 0.0, 2.0: 0.25}[r["seed"]]
    cells = report.ranked_cells(runs)
    ros = next(e for e in cells[0].methods if e.method == "ros")
    assert ros.mean["auc"] + ros.half["auc"] > 100 and ros.drawn("auc")[1] == 100.0
    seen = {}
    real_close = figures.plt.close

    def close(fig=None):
        seen["value"] = _drawn_x(fig, panels={0, 2, 4})
        seen["diff"] = _drawn_x(fig, panels={1, 3, 5})
        seen["xlim"] = [fig.axes[k].get_xlim()[1] for k in (0, 2, 4)]
        real_close(fig)
    monkeypatch.setattr(figures.plt, "close", close)
    out = report.fig_ranked("mnist", cells, tmp_path / "ranked.png")
    assert out == tmp_path / "ranked.png"
    assert_png(out)
    assert max(seen["value"]) <= 100.0 and max(seen["xlim"]) <= 100.5
    assert min(seen["diff"]) < -3 and max(seen["diff"]) < 5       # differences from the best, around 0
    assert "3 whole" in report.fig_ranked("mnist", [], tmp_path / "x.png")
