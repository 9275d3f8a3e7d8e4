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

A figure whose data is missing is skipped, and the reason is returned and written in results.md.
When a cell was run at several base learning rates (CIFAR-10), the table keeps one row per lr and the
figures plot, for each point, the lr with the best mean AUC (the paper's lr search).
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from imbalance_core import methods as M  # noqa: E402
from imbalance_core.result import ACCURACY, ACCURACY_THRESHOLDED, AUC, HEADLINE  # noqa: E402

METRICS = HEADLINE          # the per-network metrics summarised (imbalance_core/result.py)
KEY_FIELDS = ("dataset", "imbalance", "rho", "mu", "method", "level", "lr")


def is_partial(method: str) -> bool:
    """A method swept over levels (partial sampling): drawn against level, not rho."""
    spec = M.SPECS.get(method.split(":", 1)[0])
    return bool(spec and spec.needs_level)


def method_label(method: str) -> str:
    """The legend of a method: its spec's label (with its overrides), or the name of an unknown method."""
    try:
        return M.get(method).display
    except ValueError:
        return method
CSV_COLUMNS = (["dataset", "imbalance", "rho", "mu", "method", "level", "lr", "n"]
               + [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "min", "max")])


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
    return exp.experiment_id, runs


# ------------------------------------------------------------------------------------ aggregating

def _stats(values: list[float]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": mean(vals), "std": stdev(vals) if len(vals) > 1 else None,
            "min": min(vals), "max": max(vals)}


def _method_rank(method: str) -> tuple:
    """The method registry's order (imbalance_core/methods.py), read at call time; unknown methods last."""
    order = list(M.SPECS)
    base = method.split(":", 1)[0]
    return (order.index(base) if base in order else len(order), method)


def _sort_key(row: dict) -> tuple:
    none_last = lambda v: (v is None, v if v is not None else 0.0)  # noqa: E731
    return (row["dataset"], row["imbalance"], none_last(row["rho"]), none_last(row["mu"]),
            _method_rank(row["method"]), none_last(row["level"]), none_last(row["lr"]))


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

def _fmt_num(v) -> str:
    return "" if v is None else f"{v:g}"


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


def write_markdown(sweep: str, tracking_uri: str, n_runs: int, rows: list[dict], figures: list[Path],
                   skipped: dict[str, str], path: Path) -> None:
    lines = [f"# Sweep `{sweep}`", "",
             f"{n_runs} finished runs read from `{tracking_uri}`; {len(rows)} groups. "
             "Values are mean ± sample std (ddof=1) over repetitions (n; std omitted when n = 1), x100. "
             "`acc +thr` is the accuracy of the same networks with thresholding (scores divided by the "
             "pre-sampling class priors). `best post-hoc` is the best of the plain accuracy and the post-hoc "
             "corrections (logit adjustment, tau-normalisation) chosen on the test set itself: an oracle upper "
             "bound, not a method.", ""]
    lines += ["| dataset | imbalance | rho | mu | method | level | lr | n | AUC | accuracy | acc +thr | best post-hoc |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r["dataset"], r["imbalance"], _fmt_num(r["rho"]), _fmt_num(r["mu"]), r["method"],
            _fmt_num(r["level"]) or "—", _fmt_num(r["lr"]) or "default", str(r["n"]),
            *(_pm(r, m) for m in METRICS)]) + " |")
    lines += ["", "## Figures", ""]
    lines += [f"- [{p.name}]({p.name})" for p in figures] or ["- (none)"]
    if skipped:
        lines += ["", "## Skipped figures", ""]
        lines += [f"- `{name}`: {why}" for name, why in skipped.items()]
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------- figures

def _colors(methods) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(sorted(methods, key=_method_rank))}


def _panels(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """(title, rows) per imbalance type, split per mu when there are several (step)."""
    panels = []
    for imb in sorted({r["imbalance"] for r in rows}):
        sub = [r for r in rows if r["imbalance"] == imb]
        mus = sorted({r["mu"] for r in sub}, key=lambda v: (v is None, v or 0))
        if len(mus) > 1:                            # step: one panel per mu
            for mu in mus:
                panels.append((f"{imb}, mu={_fmt_num(mu)}", [r for r in sub if r["mu"] == mu]))
        else:
            panels.append((imb, sub))
    return panels


def _grid(n: int, w: float = 4.2, h: float = 3.4):
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _n_rho(panel_rows: list[dict]) -> int:
    return len({r["rho"] for r in panel_rows if r["rho"] is not None})


def _lines_vs_rho(ax, panel_rows, colors, metric: str, style: str = "-", band: bool = True,
                  label_suffix: str = "") -> None:
    for method in sorted({r["method"] for r in panel_rows}, key=_method_rank):
        pts = sorted((r for r in panel_rows if r["method"] == method and r[f"{metric}_mean"] is not None
                      and r["rho"] is not None), key=lambda r: r["rho"])
        if not pts:
            continue
        x = [r["rho"] for r in pts]
        ax.plot(x, [r[f"{metric}_mean"] for r in pts], style, marker="o", ms=3, color=colors[method],
                label=method_label(method) + label_suffix)
        if band and any(r["n"] > 1 for r in pts):
            ax.fill_between(x, [r[f"{metric}_min"] for r in pts], [r[f"{metric}_max"] for r in pts],
                            color=colors[method], alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel("rho (max / min class size)")
    ax.grid(True, which="both", alpha=0.3)


def fig_auc_vs_rho(dataset: str, rows: list[dict], out: Path) -> Path | str:
    rows = [r for r in rows if not is_partial(r["method"])]
    panels = [(t, pr) for t, pr in _panels(rows) if _n_rho(pr) >= 2]
    if not panels:
        return "needs >= 2 rho values in some (imbalance, mu) cell of non-partial methods"
    colors = _colors({r["method"] for r in rows})
    fig, axes = _grid(len(panels))
    for ax, (title, pr) in zip(axes, panels):
        _lines_vs_rho(ax, pr, colors, AUC)
        ax.set_title(f"{dataset}: {title}")
        ax.set_ylabel("ROC AUC (x100)")
    axes[0].legend(fontsize=7)
    fig.suptitle("AUC vs rho (mean; band = min-max over repetitions)", fontsize=9)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def fig_accuracy_vs_rho(dataset: str, rows: list[dict], out: Path) -> Path | str:
    rows = [r for r in rows if not is_partial(r["method"])]
    panels = [(t, pr) for t, pr in _panels(rows) if _n_rho(pr) >= 2]
    if not panels:
        return "needs >= 2 rho values in some (imbalance, mu) cell of non-partial methods"
    if not any(r["accuracy_mean"] is not None for _, pr in panels for r in pr):
        return "no accuracy metric logged"
    colors = _colors({r["method"] for r in rows})
    fig, axes = _grid(len(panels))
    for ax, (title, pr) in zip(axes, panels):
        _lines_vs_rho(ax, pr, colors, ACCURACY, "-", band=False)
        _lines_vs_rho(ax, pr, colors, ACCURACY_THRESHOLDED, "--", band=False, label_suffix=" +thr")
        ax.set_title(f"{dataset}: {title}")
        ax.set_ylabel("accuracy (%)")
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle("Accuracy vs rho: solid = argmax, dashed = with thresholding (mean over repetitions)",
                 fontsize=9)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def fig_heatmaps(dataset: str, rows: list[dict], out: Path) -> Path | str:
    step = [r for r in rows if r["imbalance"] == "step" and not is_partial(r["method"])
            and r["auc_mean"] is not None and r["rho"] is not None and r["mu"] is not None]
    methods = [m for m in sorted({r["method"] for r in step}, key=_method_rank)
               if len({r["mu"] for r in step if r["method"] == m}) >= 2
               and len({r["rho"] for r in step if r["method"] == m}) >= 2]
    if not methods:
        return "needs step imbalance with >= 2 mu and >= 2 rho values for some method"
    step = [r for r in step if r["method"] in methods]
    mus = sorted({r["mu"] for r in step})
    rhos = sorted({r["rho"] for r in step})
    vmin = min(r["auc_mean"] for r in step)
    vmax = max(r["auc_mean"] for r in step)
    fig, axes = _grid(len(methods), w=0.55 * len(rhos) + 2.6, h=0.42 * len(mus) + 2.0)
    im = None
    for ax, m in zip(axes, methods):
        grid = [[math.nan] * len(rhos) for _ in mus]
        for r in step:
            if r["method"] == m:
                grid[mus.index(r["mu"])][rhos.index(r["rho"])] = r["auc_mean"]
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(rhos)), [_fmt_num(v) for v in rhos], fontsize=7, rotation=45)
        ax.set_yticks(range(len(mus)), [_fmt_num(v) for v in mus], fontsize=7)
        ax.set_xlabel("rho")
        ax.set_ylabel("mu")
        ax.set_title(method_label(m), fontsize=9)
        if len(rhos) * len(mus) <= 120:
            for i in range(len(mus)):
                for j in range(len(rhos)):
                    if not math.isnan(grid[i][j]):
                        ax.text(j, i, f"{grid[i][j]:.1f}", ha="center", va="center", fontsize=6,
                                color="white" if grid[i][j] < (vmin + vmax) / 2 else "black")
    fig.colorbar(im, ax=axes, shrink=0.8, label="mean ROC AUC (x100)")
    fig.suptitle(f"{dataset}, step imbalance: mean AUC over repetitions", fontsize=9)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def fig_partial(dataset: str, rows: list[dict], out: Path) -> Path | str:
    partial = [r for r in rows if is_partial(r["method"]) and r["level"] is not None and r["auc_mean"] is not None]
    if not partial:
        return "no partial-ros / partial-rus runs"
    cells = sorted({(r["imbalance"], r["rho"], r["mu"]) for r in partial},
                   key=lambda c: (c[0], c[1] or 0, c[2] or 0))
    partial_methods = sorted({r["method"] for r in partial}, key=_method_rank)
    colors = _colors(set(partial_methods))
    panels = []
    for imb, rho, mu in cells:
        same = [r for r in rows if (r["imbalance"], r["rho"], r["mu"]) == (imb, rho, mu) and r["auc_mean"] is not None]
        curves = {}
        for pm in partial_methods:
            pts = {r["level"]: r for r in same if r["method"] == pm and r["level"] is not None}
            if not pts:
                continue
            base = M.get(pm).phases[0].sampler.removeprefix("partial-")   # its full-sampling anchor
            for r in same:                          # anchors: the original set and full sampling
                if r["method"] == "baseline" and rho is not None:
                    pts.setdefault(rho, r)
                if r["method"] == base:
                    pts.setdefault(1.0, r)
            curves[pm] = sorted(pts.items())
        if any(len(c) >= 2 for c in curves.values()):
            panels.append((imb, rho, mu, curves))
    if not panels:
        return "partial sampling needs >= 2 levels (baseline and full ROS/RUS count as levels rho and 1)"
    fig, axes = _grid(len(panels))
    for ax, (imb, rho, mu, curves) in zip(axes, panels):
        for pm, pts in curves.items():
            x = [lv for lv, _ in pts]
            ax.plot(x, [r["auc_mean"] for _, r in pts], "-o", ms=3, color=colors[pm], label=method_label(pm))
            if any(r["n"] > 1 for _, r in pts):
                ax.fill_between(x, [r["auc_min"] for _, r in pts], [r["auc_max"] for _, r in pts],
                                color=colors[pm], alpha=0.15, lw=0)
        ax.set_xscale("log")
        ax.invert_xaxis()                           # original imbalance (level = rho) on the left
        ax.set_xlabel("level (imbalance ratio left after sampling)")
        ax.set_ylabel("ROC AUC (x100)")
        ax.set_title(f"{dataset}: {imb}, rho={_fmt_num(rho)}, mu={_fmt_num(mu)}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Partial sampling\n(level = rho: baseline; level = 1: full ROS / RUS)", fontsize=9)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


FIGURES = (("auc_vs_rho", fig_auc_vs_rho), ("heatmap_auc", fig_heatmaps),
           ("accuracy_vs_rho", fig_accuracy_vs_rho), ("partial_sampling", fig_partial))


# ------------------------------------------------------------------------------------------- API

def build_report(tracking_uri: str, sweep_name: str, out_dir: str | Path | None = None) -> dict:
    """Read the sweep's FINISHED runs and write results.csv, results.md and the figures to out_dir.

    Returns {"experiment_id", "n_runs", "n_groups", "out_dir", "results_csv", "results_md",
    "figures": [paths], "skipped": {figure file name: reason}}. Raises SweepNotFound for an unknown
    sweep name (the message lists the experiments present).
    """
    experiment_id, runs = load_runs(tracking_uri, sweep_name)
    out = Path(out_dir) if out_dir is not None else Path("reports") / sweep_name
    out.mkdir(parents=True, exist_ok=True)
    rows = aggregate(runs)
    plot_rows = _best_lr(rows)
    figures: list[Path] = []
    skipped: dict[str, str] = {}
    datasets = sorted({r["dataset"] for r in rows})
    if not datasets:
        skipped.update({name: "no finished runs with metrics" for name, _ in FIGURES})
    for ds in datasets:
        ds_rows = [r for r in plot_rows if r["dataset"] == ds]
        for name, fn in FIGURES:
            target = out / f"{name}_{ds}.png"
            res = fn(ds, ds_rows, target)
            if isinstance(res, Path):
                figures.append(res)
            else:
                skipped[target.name] = res
                target.unlink(missing_ok=True)      # no stale figure from an earlier report
    csv_path, md_path = out / "results.csv", out / "results.md"
    write_csv(rows, csv_path)
    write_markdown(sweep_name, tracking_uri, len(runs), rows, figures, skipped, md_path)
    return {"experiment_id": experiment_id, "n_runs": len(runs), "n_groups": len(rows), "out_dir": out,
            "results_csv": csv_path, "results_md": md_path, "figures": figures, "skipped": skipped}


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
