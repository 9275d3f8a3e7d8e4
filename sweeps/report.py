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
- `ranked.md` and `ranked_<dataset>.png`: per cell with >= 3 whole methods, the methods ranked by mean AUC,
  each compared with the best method of the cell **paired by seed** (`paired`, `ranked_cells`): one seed gives
  every method of a cell the same imbalanced subset, minority classes and initial weights, so the difference
  is taken seed by seed and the 95% t-interval is that of the mean of those differences (a seed one method
  lacks is left out, and named). A tie (the interval within +-TIE_RELATIVE of the smaller error 100 - metric,
  at least TIE_FLOOR points) is read first. An interval of a metric bounded at 100 is never drawn or quoted
  past 100 (`clipped`).

Comparisons between cells with different subsets (another rho, step against linear) are unpaired (`welch`);
`sweeps.findings` uses both.

The figures are drawn by `sweeps.figures` (REPORT_FIGURES and `fig_ranked`). A figure whose data is missing is skipped,
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
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, mean, stdev

if __name__ == "__main__":                  # run as a script: the repo on the path, and store_name's relative import
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "sweeps"                  # noqa: A001

import mlflow
from mlflow.tracking import MlflowClient
from scipy.stats import t as student_t

from imbalance_core.result import ACCURACY, AUC, HEADLINE
from sweeps.figures import (RANKED_METRICS, REPORT_FIGURES, fig_ranked, fmt_num, is_partial, method_label,
                            method_rank)

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
            "artifact_uri": row.get("artifact_uri"),
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
            # the size of the test set the network was scored on: a metric where the store logs it, otherwise
            # in the run's result.json (`fill_test_examples` reads it for the runs that need it)
            "test_examples": _num(row.get("metrics.test_examples")),
            **metrics,
        })
    return runs


def _result_json(tracking_uri: str, artifact_uri: str | None) -> dict | None:
    """A run's result.json artifact, or None where it cannot be read. A relative artifact location (a published
    store) is relative to the store's folder."""
    import json

    from sweeps.tracking import local_store_dir
    if not artifact_uri:
        return None
    folder = local_store_dir(tracking_uri)
    try:
        if "://" not in artifact_uri and not artifact_uri.startswith("/"):
            if folder is None:
                return None
            return json.loads((folder / artifact_uri / "result.json").read_text())
        if artifact_uri.startswith("file://") or artifact_uri.startswith("/"):
            return json.loads((Path(artifact_uri.removeprefix("file://")) / "result.json").read_text())
        return mlflow.artifacts.load_dict(f"{artifact_uri.rstrip('/')}/result.json")
    except Exception:                      # noqa: BLE001 -- a missing or unreadable artifact: the size stays unknown
        return None


def fill_test_examples(tracking_uri: str, runs: list[dict]) -> int:
    """Set `test_examples` of the given runs that lack it from their result.json (a few runs: one read each).
    Returns how many are still unknown."""
    unknown = 0
    for r in runs:
        if r.get("test_examples") is None:
            res = _result_json(tracking_uri, r.get("artifact_uri"))
            r["test_examples"] = _num(res.get("test_examples")) if res else None
            unknown += r["test_examples"] is None
    return unknown


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


def best_lr_runs(runs: list[dict]) -> list[dict]:
    """The runs of `_best_lr`'s rows: per (dataset, imbalance, rho, mu, method, level), only the runs at the lr
    with the best mean AUC (the paper's lr search; the lr of a cell run at one lr is that lr)."""
    keep = {tuple(r[f] for f in KEY_FIELDS) for r in _best_lr(aggregate(runs))}
    return [r for r in runs if tuple(r[f] for f in KEY_FIELDS) in keep]


# ------------------------------------------------------------------------------------ comparing

CONFIDENCE = 0.95
BOUND = 100.0              # every metric compared is a percentage (x100): AUC and the accuracies
TIE_RELATIVE = 0.10        # a difference within +-10% of the smaller error (100 - metric) of the two is a tie ...
TIE_FLOOR = 0.05           # ... or within +-0.05 points where that is larger (about 4 of MNIST's 8,920 test images)
PAIRED, WELCH = "paired", "Welch"


def tie_margin(mean_a: float, mean_b: float) -> float:
    """The half-width of the tie band of a difference between two means of a metric bounded at BOUND:
    TIE_RELATIVE x the smaller error (BOUND - mean) of the two, at least TIE_FLOOR points. It means the same
    near AUC 99.9 (error 0.1: the floor) as near 90 (error 10: 1 point)."""
    return max(TIE_FLOOR, TIE_RELATIVE * min(BOUND - mean_a, BOUND - mean_b))


def _sd(values: list[float]) -> float:
    """The sample standard deviation (ddof 1) in floating point (statistics.stdev is exact, and slow)."""
    m = fmean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def t_half_width(values: list[float], confidence: float = CONFIDENCE) -> float | None:
    """Half-width of the two-sided t-interval of the mean of `values` (n - 1 df); None for fewer than 2."""
    if len(values) < 2:
        return None
    return float(student_t.ppf(0.5 + confidence / 2, len(values) - 1)) * _sd(values) / math.sqrt(len(values))


def clipped(lo: float, hi: float, bound: float = BOUND) -> tuple[float, float]:
    """An interval of a metric that cannot exceed `bound`, as drawn or quoted: no end past the bound."""
    return min(lo, bound), min(hi, bound)


@dataclass(frozen=True)
class Diff:
    """A minus B in one metric, with its CONFIDENCE t-interval and how it was computed.

    kind PAIRED: per seed, A's network minus B's network of the same seed (the same imbalanced subset, minority
    classes and initial weights); the interval is that of the mean of the n differences (n - 1 df). kind WELCH:
    the difference of the two means, Welch's interval (cells with different subsets). `margin` is the tie margin
    (`tie_margin` of the two means compared); `note` names the seeds one side lacks (left out of the pairs)."""
    kind: str
    estimate: float | None
    ci: tuple[float, float] | None
    n: int
    margin: float | None
    note: str = ""
    n_b: int | None = None                  # Welch: the runs of B (n is A's)

    @property
    def outcome(self) -> str:
        """'=' a tie (the interval lies within +-margin: checked first, even when it excludes 0), '>' A better
        (above 0), '<' A worse (below 0), '?' undecided (it holds 0 and reaches past the margin, or n < 2)."""
        if self.ci is None:
            return "?"
        lo, hi = self.ci
        if -self.margin <= lo and hi <= self.margin:
            return "="
        if lo > 0:
            return ">"
        if hi < 0:
            return "<"
        return "?"

    @property
    def n_text(self) -> str:
        if self.kind == PAIRED:
            return f"n = {self.n} pair{'s' * (self.n != 1)}" + (f"; {self.note}" if self.note else "")
        if self.kind == WELCH:
            return f"unpaired, n = {self.n} and {self.n_b}"
        return f"n = {self.n} seed{'s' * (self.n != 1)}" + (f"; {self.note}" if self.note else "")

    def interval_text(self) -> str:
        """'+1.23 [+0.50, +1.96]' or the reason there is no interval."""
        if self.estimate is None:
            return "no runs to compare"
        if self.ci is None:
            return f"{self.estimate:+.2f} (no interval: n < 2)"
        return f"{self.estimate:+.2f} [{self.ci[0]:+.2f}, {self.ci[1]:+.2f}]"

    def text(self) -> str:
        """'paired 95% CI ... (n = 3 pairs), tie within +-0.30 -> <'."""
        tie = "" if self.margin is None else f", tie within ±{self.margin:.2f}"
        return (f"{self.kind} {CONFIDENCE:.0%} CI {self.interval_text()} ({self.n_text}){tie} -> {self.outcome}")


def _by_seed(runs: list[dict], metric: str) -> dict[float, float]:
    """{seed: value} of runs with a seed and a value; two runs of one seed (never in a sweep) are averaged."""
    vals: dict[float, list[float]] = defaultdict(list)
    for r in runs:
        if r.get("seed") is not None and r.get(metric) is not None:
            vals[r["seed"]].append(r[metric])
    return {s: v[0] if len(v) == 1 else fmean(v) for s, v in vals.items()}


def _seeds_text(seeds) -> str:
    s = sorted(seeds)
    return f"seed{'s' * (len(s) > 1)} {', '.join(fmt_num(v) for v in s)}"


def paired(a: list[dict], b: list[dict], metric: str, metric_b: str | None = None, names: tuple[str, str] = ("A", "B")
           ) -> Diff:
    """A minus B paired by seed: the runs of A and B (two methods of one cell, or two metrics of the same
    networks with `metric_b`) matched seed by seed; a seed one side lacks is left out and named in `note`."""
    va, vb = _by_seed(a, metric), _by_seed(b, metric_b or metric)
    common = sorted(set(va) & set(vb))
    notes = [f"{_seeds_text(set(va) - set(vb))} missing for {names[1]}"] if set(va) - set(vb) else []
    notes += [f"{_seeds_text(set(vb) - set(va))} missing for {names[0]}"] if set(vb) - set(va) else []
    if not common:
        return Diff(PAIRED, None, None, 0, None, "; ".join(notes))
    d = [va[s] - vb[s] for s in common]
    est = fmean(d)
    margin = tie_margin(fmean(va[s] for s in common), fmean(vb[s] for s in common))
    h = t_half_width(d)
    return Diff(PAIRED, est, None if h is None else (est - h, est + h), len(d), margin, "; ".join(notes))


def welch(a: list[dict], b: list[dict], metric: str) -> Diff:
    """mean(A) - mean(B) with the Welch t-interval: for cells with different subsets (unpaired)."""
    xa = [r[metric] for r in a if r.get(metric) is not None]
    xb = [r[metric] for r in b if r.get(metric) is not None]
    if not xa or not xb:
        return Diff(WELCH, None, None, len(xa), None, n_b=len(xb))
    ma, mb = fmean(xa), fmean(xb)
    d, margin = ma - mb, tie_margin(ma, mb)
    if len(xa) < 2 or len(xb) < 2:
        return Diff(WELCH, d, None, len(xa), margin, n_b=len(xb))
    va, vb = _sd(xa) ** 2 / len(xa), _sd(xb) ** 2 / len(xb)
    if va + vb == 0:
        return Diff(WELCH, d, (d, d), len(xa), margin, n_b=len(xb))
    df = (va + vb) ** 2 / ((va ** 2 / (len(xa) - 1)) + (vb ** 2 / (len(xb) - 1)))
    h = float(student_t.ppf(0.5 + CONFIDENCE / 2, df)) * math.sqrt(va + vb)
    return Diff(WELCH, d, (d - h, d + h), len(xa), margin, n_b=len(xb))


# ------------------------------------------------------------------------------------ ranking

@dataclass
class Ranked:
    """One method of a ranked cell: its runs, per metric the mean over them and the half-width of its 95%
    t-interval, and (`vs_best`) its paired difference from the best method of the cell in that metric (None for
    the best itself)."""
    method: str
    runs: list[dict]
    mean: dict[str, float | None]
    half: dict[str, float | None]
    vs_best: dict[str, Diff | None] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.runs)

    def drawn(self, metric: str) -> tuple[float, float] | None:
        """The 95% interval of the mean as drawn or quoted: clipped at BOUND."""
        m, h = self.mean[metric], self.half[metric]
        return None if m is None or h is None else clipped(m - h, m + h)


@dataclass
class RankedCell:
    """Every whole method of one cell (dataset, imbalance, rho, mu), best mean AUC first, and per metric the best."""
    dataset: str
    imbalance: str
    rho: float | None
    mu: float | None
    methods: list[Ranked]
    best: dict[str, Ranked | None]

    @property
    def title(self) -> str:
        return f"{self.dataset}: {self.imbalance}, rho {fmt_num(self.rho)}, mu {fmt_num(self.mu)}"


def ranked_cells(runs: list[dict]) -> list[RankedCell]:
    """The cells with >= 3 whole methods (not swept over a level: `MethodSpec.needs_level`), each method at its
    best-AUC lr (`best_lr_runs`), methods ranked by mean AUC; each compared with the best of its cell per metric,
    paired by seed (`paired`)."""
    cells: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    partial = {m for m in {r["method"] for r in runs} if is_partial(m)}
    for r in best_lr_runs(runs):
        if r["method"] not in partial and r.get(AUC) is not None:
            cells[(r["dataset"], r["imbalance"], r["rho"], r["mu"])][r["method"]].append(r)
    out = []
    none_last = lambda v: (v is None, v or 0.0)  # noqa: E731
    for key in sorted(cells, key=lambda k: (k[0], k[1], none_last(k[2]), none_last(k[3]))):
        by_method = cells[key]
        if len(by_method) < 3:
            continue
        entries = []
        for method, rs in by_method.items():
            vals = {m: [r[m] for r in rs if r.get(m) is not None] for m, _ in RANKED_METRICS}
            entries.append(Ranked(method, rs, {m: fmean(v) if v else None for m, v in vals.items()},
                                  {m: t_half_width(v) for m, v in vals.items()}))
        entries.sort(key=lambda e: (-e.mean[AUC], method_rank(e.method)))
        best = {m: max((e for e in entries if e.mean[m] is not None), key=lambda e: e.mean[m], default=None)
                for m, _ in RANKED_METRICS}
        for e in entries:
            for m, _ in RANKED_METRICS:
                top = best[m]
                e.vs_best[m] = (None if top is None or e is top or e.mean[m] is None else
                                paired(e.runs, top.runs, m, names=(e.method, top.method)))
        out.append(RankedCell(*key, entries, best))
    return out


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
    lines += ["", "Methods ranked per cell, each compared with the best one paired by seed (95% intervals): "
              "[ranked.md](ranked.md).", "", "## Figures", ""]
    lines += [f"- [{p.name}]({p.name})" for p in figures] or ["- (none)"]
    if skipped:
        lines += ["", "## Skipped figures", ""]
        lines += [f"- `{name}`: {why}" for name, why in skipped.items()]
    path.write_text("\n".join(lines) + "\n")


MARKS = {"=": "tie", "<": "below", ">": "above", "?": "not resolved"}


def _value(e: Ranked, metric: str) -> str:
    m, h = e.mean[metric], e.half[metric]
    return "—" if m is None else f"{m:.2f} ± {h:.2f}" if h is not None else f"{m:.2f}"


def _vs_best(e: Ranked, metric: str, best: Ranked | None) -> str:
    if best is None or e.mean[metric] is None:
        return "—"
    if e is best:
        return "best"
    d = e.vs_best[metric]
    extra = f" (n = {d.n} pairs; {d.note})" if d.note else ""
    return f"{d.interval_text()} {MARKS[d.outcome]}{extra}"


def ranked_markdown(sweep: str, runs: list[dict]) -> str:
    """ranked.md: per cell with >= 3 whole methods (`ranked_cells`), the methods ranked by mean AUC with the mean
    ± the half-width of its 95% interval, and, per metric, each method's difference from the best one paired by
    seed with its 95% interval and what that interval says (tie, below, not resolved)."""
    lines = [f"# Sweep `{sweep}`: methods ranked per cell", "",
             "Ranked by mean AUC. `mean ± h`: the mean over repetitions and the half-width of its 95% Student-t "
             "interval (x100; the interval of one method's mean, not a comparison). `minus best`: the method's "
             "difference from the best method of the cell in that metric, **paired by seed** (a seed gives every "
             "method of a cell the same imbalanced subset, minority classes and initial weights: the difference is "
             "taken network by network, seed by seed, and its 95% t-interval is that of the mean of those "
             "differences; a seed one of the two lacks is left out and named). Read in this order: **tie** when the "
             f"interval lies within ±{TIE_RELATIVE:.0%} of the smaller error (100 − metric) of the two, at least "
             f"±{TIE_FLOOR:g} points (even when it excludes 0); **below** when it lies below 0; **above** when it "
             "lies above 0 (possible where seeds are missing); otherwise **not resolved** by these repetitions. "
             "`best post-hoc` is chosen on the test set: an oracle bound.", ""]
    for cell in ranked_cells(runs):
        lines += [f"## {cell.title}", "",
                  "| rank | method | n | " + " | ".join(f"{label} | minus best" for _, label in RANKED_METRICS) + " |",
                  "|---|---|---|" + "---|---|" * len(RANKED_METRICS)]
        for i, e in enumerate(cell.methods, 1):
            vals = [f"{_value(e, m)} | {_vs_best(e, m, cell.best[m])}" for m, _ in RANKED_METRICS]
            lines.append(f"| {i} | {method_label(e.method)} | {e.n} | " + " | ".join(vals) + " |")
        lines.append("")
        for m, label in RANKED_METRICS:
            top = cell.best[m]
            if top is None:
                continue
            by = defaultdict(list)
            for e in cell.methods:
                if e is not top and e.vs_best[m] is not None:
                    by[e.vs_best[m].outcome].append(method_label(e.method))
            lines.append(f"- {label}: best {method_label(top.method)}; tied with it: {', '.join(by['=']) or 'none'}; "
                         f"below it: {', '.join(by['<']) or 'none'}; not resolved: {', '.join(by['?']) or 'none'}"
                         + (f"; above it on the paired seeds: {', '.join(by['>'])}" if by[">"] else "") + ".")
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
    figure_fns = REPORT_FIGURES + (("ranked", None),)
    if not datasets:
        skipped.update({name: "no finished runs with metrics" for name, _ in figure_fns})
    cells = ranked_cells(runs)
    for ds in datasets:
        ds_rows = [r for r in plot_rows if r["dataset"] == ds]
        for name, fn in figure_fns:
            target = out / f"{name}_{ds}.png"
            # the ranked figure draws the paired comparisons of ranked.md (per-network runs); the others the means
            res = (fig_ranked(ds, [c for c in cells if c.dataset == ds], target) if fn is None else
                   fn(ds, ds_rows, target))
            if isinstance(res, Path):
                figures.append(res)
            else:
                skipped[target.name] = res
                target.unlink(missing_ok=True)      # no stale figure from an earlier report
    csv_path, md_path, ranked_path = out / "results.csv", out / "results.md", out / "ranked.md"
    write_csv(rows, csv_path)
    write_markdown(sweep_name, tracking_uri, len(runs), rows, figures, skipped, md_path)
    ranked_path.write_text(ranked_markdown(sweep_name, runs))
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
