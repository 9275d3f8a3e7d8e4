"""Report of a finished sweep, read back from MLflow: figures, a Markdown table and a CSV.

    python sweeps/report.py --tracking-uri sqlite:///mlruns.db --name SWEEP [--out DIR]

Reads the FINISHED runs of the experiment named SWEEP (layout: docs/SWEEP_CONTRACT.md) and writes
to DIR (default `reports/<SWEEP>/`):

- `results.csv` / `results.md`: one row per (dataset, imbalance, rho, mu, method, level, lr) with n
  (repetitions = seeds) and mean / sample std (ddof=1; blank when n = 1) / min / max of AUC, accuracy
  and thresholded accuracy (the "+thr" variant of every method is its `accuracy_thresholded`).
- `auc_vs_rho_<dataset>.png`: AUC vs rho (log x) per method, one panel per imbalance type (step: one
  panel per mu when there are several); line = mean, band = min-max over repetitions.
- `heatmap_auc_<dataset>.png`: mu x rho mean AUC, one panel per method (step imbalance; needs >= 2 mu
  and >= 2 rho).
- `accuracy_vs_rho_<dataset>.png`: accuracy (solid) and thresholded accuracy (dashed) vs rho.
- `partial_sampling_<dataset>.png`: AUC vs level (imbalance ratio left after sampling, log x) for
  partial-ros / partial-rus, anchored by baseline (level = rho) and full ROS / RUS (level = 1) when
  those runs exist.

The figures are drawn by `sweeps.figures` (REPORT_FIGURES). A figure whose data is missing is skipped,
and the reason is returned and written in results.md.
When a cell was run at several base learning rates (CIFAR-10), the table keeps one row per lr and the
figures plot, for each point, the lr with the best mean AUC (the paper's lr search).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev

import mlflow
from mlflow.tracking import MlflowClient
from scipy.stats import t as student_t

from imbalance_core.result import ACCURACY, AUC, HEADLINE
from sweeps.figures import RANKED_METRICS, REPORT_FIGURES, fmt_num, method_label, method_rank, ranked_cells

METRICS = HEADLINE          # the per-network metrics summarised (imbalance_core/result.py)
KEY_FIELDS = ("dataset", "imbalance", "rho", "mu", "method", "level", "lr")
CSV_COLUMNS = (["dataset", "imbalance", "rho", "mu", "method", "level", "lr", "n"]
               + [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "min", "max", "ci95")])


class SweepNotFound(LookupError):
    """The sweep name names no experiment of the tracking store."""


# ----------------------------------------------------------------------------------------- reading

def _num(value) -> float | None:
    """A param string back to a number: "None" / "" / missing -> None."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    s = str(value).strip()
    if s in ("", "None", "none", "null", "nan"):
        return None
    return float(s)


def load_runs(tracking_uri: str, sweep_name: str) -> tuple[str, list[dict]]:
    """(experiment id, one dict per FINISHED run: the key fields, seed, run name and metrics)."""
    experiment_id, df = _finished_runs(tracking_uri, sweep_name)
    return experiment_id, _runs_of(df)


def _finished_runs(tracking_uri: str, sweep_name: str):
    """(experiment id, a pandas frame of its FINISHED runs: every param, metric and tag as a column)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(sweep_name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments(view_type=mlflow.entities.ViewType.ALL))
        raise SweepNotFound(
            f"no experiment named {sweep_name!r} in {tracking_uri}; "
            f"experiments present: {', '.join(repr(n) for n in names) or '(none)'}")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        df = mlflow.search_runs(experiment_ids=[exp.experiment_id],
                                filter_string="attributes.status = 'FINISHED'",
                                run_view_type=mlflow.entities.ViewType.ACTIVE_ONLY,
                                output_format="pandas")
    finally:
        mlflow.set_tracking_uri(previous)
    return exp.experiment_id, df


def _runs_of(df) -> list[dict]:
    runs = []
    for row in df.to_dict("records"):
        p = lambda k: row.get(f"params.{k}")  # noqa: E731
        metrics = {m: _num(row.get(f"metrics.{m}")) for m in METRICS}
        if metrics[AUC] is None and metrics[ACCURACY] is None:
            continue                       # finished but with no result metrics: nothing to report
        runs.append({
            "run_id": row["run_id"],
            "run_name": row.get("tags.mlflow.runName"),
            "dataset": str(p("dataset")),
            "imbalance": str(p("imbalance")),
            "rho": _num(p("rho")),
            "mu": _num(p("mu")),
            "method": str(p("method") or row.get("tags.method")),
            "level": _num(p("level")),
            "lr": _num(p("lr")),
            "seed": _num(p("seed")),
            "iterations": _num(p("iterations")),
            "batch_size": _num(p("batch_size")),
            "n_per_class": _num(p("n_per_class")),
            **metrics,
        })
    return runs


NETWORK_COLUMNS_FIRST = ("run_id", "tags.mlflow.runName", "start_time", "end_time")


def write_networks_csv(df, path: Path) -> int:
    """One row per network (FINISHED run): its run id, name, start and end, then every param, metric and
    tag MLflow holds for it, sorted by run name. Returns the number of rows."""
    cols = [c for c in NETWORK_COLUMNS_FIRST if c in df.columns]
    for prefix in ("params.", "metrics.", "tags."):
        cols += sorted(c for c in df.columns if c.startswith(prefix) and c not in cols
                       and not c.startswith("tags.mlflow."))
    rows = df[cols].sort_values("tags.mlflow.runName") if len(df) else df[cols]
    rows.to_csv(path, index=False)
    return len(rows)


# ------------------------------------------------------------------------------------ aggregating

def _stats(values: list[float]) -> dict:
    """mean, std, min, max over the seeds, and ci95: the half-width of the 95% Student-t interval of the mean
    (t_{0.975, n-1} * std / sqrt(n); None for one run)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None, "ci95": None}
    sd = stdev(vals) if len(vals) > 1 else None
    ci = float(student_t.ppf(0.975, len(vals) - 1)) * sd / len(vals) ** 0.5 if sd is not None else None
    return {"mean": mean(vals), "std": sd, "min": min(vals), "max": max(vals), "ci95": ci}


def _sort_key(row: dict) -> tuple:
    none_last = lambda v: (v is None, v if v is not None else 0.0)  # noqa: E731
    return (row["dataset"], row["imbalance"], none_last(row["rho"]), none_last(row["mu"]),
            method_rank(row["method"]), none_last(row["level"]), none_last(row["lr"]))


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per KEY_FIELDS group: n and the stats of each metric over the group's runs (seeds)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[tuple(r[k] for k in KEY_FIELDS)].append(r)
    rows = []
    for key, members in groups.items():
        row = dict(zip(KEY_FIELDS, key))
        row["n"] = len(members)
        for m in METRICS:
            for s, v in _stats([r.get(m) for r in members]).items():
                row[f"{m}_{s}"] = v
        rows.append(row)
    return sorted(rows, key=_sort_key)


def _best_lr(rows: list[dict]) -> list[dict]:
    """Per (dataset, imbalance, rho, mu, method, level): the row of the lr with the best mean AUC."""
    best: dict[tuple, dict] = {}
    for r in rows:
        k = tuple(r[f] for f in KEY_FIELDS if f != "lr")
        score = r["auc_mean"] if r["auc_mean"] is not None else -math.inf
        if k not in best or score > (best[k]["auc_mean"] if best[k]["auc_mean"] is not None else -math.inf):
            best[k] = r
    return sorted(best.values(), key=_sort_key)


# ---------------------------------------------------------------------------------------- writing

def _csv_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in rows:
            w.writerow([_csv_value(r[c]) for c in CSV_COLUMNS])


def _pm(row: dict, metric: str) -> str:
    m, s = row[f"{metric}_mean"], row[f"{metric}_std"]
    if m is None:
        return "—"
    return f"{m:.2f} ± {s:.2f}" if s is not None else f"{m:.2f}"


def store_name(tracking_uri: str, out_dir: Path) -> str:
    """The store as a page names it: an embedded store by its path relative to the page's folder (a page
    and its store travel together: no machine's absolute path), any other by its URI without a password."""
    from .tracking import local_store_dir, redact
    if local_store_dir(tracking_uri) is None:
        return redact(tracking_uri)
    db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
    return f"sqlite:///{os.path.relpath(db, Path(out_dir).resolve())} (relative to this folder)"


def write_markdown(sweep: str, tracking_uri: str, n_runs: int, rows: list[dict], figures: list[Path],
                   skipped: dict[str, str], path: Path) -> None:
    lines = [f"# Sweep `{sweep}`", "",
             f"{n_runs} finished runs read from `{store_name(tracking_uri, path.parent)}`; {len(rows)} groups. "
             "Values are mean ± sample std (ddof=1) over repetitions (n; std omitted when n = 1), x100. "
             "`acc +thr` is the accuracy of the same networks with thresholding (scores divided by the "
             "pre-sampling class priors). `best post-hoc` is the best of the plain accuracy and the post-hoc "
             "corrections (logit adjustment, tau-normalisation) chosen on the test set itself: an oracle upper "
             "bound, not a method.", ""]
    lines += ["| dataset | imbalance | rho | mu | method | level | lr | n | AUC | accuracy | acc +thr | best post-hoc |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r["dataset"], r["imbalance"], fmt_num(r["rho"]), fmt_num(r["mu"]), r["method"],
            fmt_num(r["level"]) or "—", fmt_num(r["lr"]) or "default", str(r["n"]),
            *(_pm(r, m) for m in METRICS)]) + " |")
    lines += ["", "Methods ranked per cell, with 95% intervals: [ranked.md](ranked.md).", "", "## Figures", ""]
    lines += [f"- [{p.name}]({p.name})" for p in figures] or ["- (none)"]
    if skipped:
        lines += ["", "## Skipped figures", ""]
        lines += [f"- `{name}`: {why}" for name, why in skipped.items()]
    path.write_text("\n".join(lines) + "\n")


def _ci(row: dict, metric: str) -> str:
    m, c = row[f"{metric}_mean"], row[f"{metric}_ci95"]
    return "—" if m is None else f"{m:.2f} ± {c:.2f}" if c is not None else f"{m:.2f}"


def resolved(a: dict, b: dict, metric: str) -> bool | None:
    """Whether the 95% intervals of two rows' means are apart (None: a row or its interval is missing, n = 1)."""
    if a is None or b is None:
        return None
    ma, ca, mb, cb = a[f"{metric}_mean"], a[f"{metric}_ci95"], b[f"{metric}_mean"], b[f"{metric}_ci95"]
    if None in (ma, ca, mb, cb):
        return None
    return abs(ma - mb) > ca + cb


def ranked_markdown(sweep: str, rows: list[dict]) -> str:
    """ranked.md: per cell with >= 3 whole methods (figures.ranked_cells), the methods ranked by mean AUC
    with the 95% interval of each mean, and, per metric, which are not resolved from the best one."""
    lines = [f"# Sweep `{sweep}`: methods ranked per cell", "",
             "Ranked by mean AUC. Each value is the mean over repetitions ± the half-width of its 95% Student-t "
             "interval (x100). Per metric, ≈ marks a method whose interval overlaps the best method's "
             "(the difference is inside the intervals: not resolved by these repetitions), < one whose "
             "interval lies wholly below it. `best post-hoc` is chosen on the test set: an oracle bound.", ""]
    for (imb, rho, mu), rs in ranked_cells(rows).items():
        ds = rs[0]["dataset"]
        best = {m: max((r for r in rs if r[f"{m}_mean"] is not None), key=lambda r: r[f"{m}_mean"], default=None)
                for m, _ in RANKED_METRICS}
        lines += [f"## {ds}: {imb}, rho {fmt_num(rho)}, mu {fmt_num(mu)}", "",
                  "| rank | method | n | " + " | ".join(label for _, label in RANKED_METRICS) + " |",
                  "|---|---|---|" + "---|" * len(RANKED_METRICS)]
        for i, r in enumerate(rs, 1):
            marks = []
            for m, _ in RANKED_METRICS:
                apart = None if r is best[m] else resolved(r, best[m], m)
                marks.append(_ci(r, m) + ("" if r is best[m] else {True: " <", False: " ≈", None: ""}[apart]))
            lines.append(f"| {i} | {method_label(r['method'])} | {r['n']} | " + " | ".join(marks) + " |")
        lines.append("")
        for m, label in RANKED_METRICS:
            if best[m] is None:
                continue
            inside = [method_label(r["method"]) for r in rs if r is not best[m] and resolved(r, best[m], m) is False]
            below = [method_label(r["method"]) for r in rs if r is not best[m] and resolved(r, best[m], m)]
            lines.append(f"- {label}: best {method_label(best[m]['method'])}; inside its interval (not resolved): "
                         f"{', '.join(inside) or 'none'}; below it: {', '.join(below) or 'none'}.")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- API

def build_report(tracking_uri: str, sweep_name: str, out_dir: str | Path | None = None) -> dict:
    """Read the sweep's FINISHED runs and write results.csv (per group), networks.csv (one row per network:
    every param, metric and tag), results.md and the figures to out_dir.

    Returns {"experiment_id", "n_runs", "n_groups", "out_dir", "results_csv", "results_md",
    "figures": [paths], "skipped": {figure file name: reason}}. Raises SweepNotFound for an unknown
    sweep name (the message lists the experiments present).
    """
    experiment_id, df = _finished_runs(tracking_uri, sweep_name)
    runs = _runs_of(df)
    out = Path(out_dir) if out_dir is not None else Path("reports") / sweep_name
    out.mkdir(parents=True, exist_ok=True)
    networks_csv = out / "networks.csv"
    write_networks_csv(df, networks_csv)
    rows = aggregate(runs)
    plot_rows = _best_lr(rows)
    figures: list[Path] = []
    skipped: dict[str, str] = {}
    datasets = sorted({r["dataset"] for r in rows})
    if not datasets:
        skipped.update({name: "no finished runs with metrics" for name, _ in REPORT_FIGURES})
    for ds in datasets:
        ds_rows = [r for r in plot_rows if r["dataset"] == ds]
        for name, fn in REPORT_FIGURES:
            target = out / f"{name}_{ds}.png"
            res = fn(ds, ds_rows, target)
            if isinstance(res, Path):
                figures.append(res)
            else:
                skipped[target.name] = res
                target.unlink(missing_ok=True)      # no stale figure from an earlier report
    csv_path, md_path, ranked_path = out / "results.csv", out / "results.md", out / "ranked.md"
    write_csv(rows, csv_path)
    write_markdown(sweep_name, tracking_uri, len(runs), rows, figures, skipped, md_path)
    ranked_path.write_text(ranked_markdown(sweep_name, plot_rows))
    return {"experiment_id": experiment_id, "n_runs": len(runs), "n_groups": len(rows), "out_dir": out,
            "results_csv": csv_path, "results_md": md_path, "networks_csv": networks_csv, "figures": figures,
            "skipped": skipped, "ranked_md": ranked_path}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", required=True, help="MLflow tracking URI, e.g. sqlite:///mlruns.db")
    ap.add_argument("--name", required=True, help="sweep name = MLflow experiment name")
    ap.add_argument("--out", default=None, help="output folder (default reports/<name>/)")
    args = ap.parse_args(argv)
    try:
        res = build_report(args.tracking_uri, args.name, args.out)
    except SweepNotFound as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    print(f"report: {res['n_runs']} finished runs, {res['n_groups']} groups -> {res['out_dir']}")
    print(f"  {res['results_md']}\n  {res['results_csv']}")
    for p in res["figures"]:
        print(f"  {p}")
    for name, why in res["skipped"].items():
        print(f"  skipped {name}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
