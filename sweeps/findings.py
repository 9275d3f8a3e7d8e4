"""Check the paper's findings (STUDY.md, "What the paper found") against a sweep's runs in MLflow.

    python sweeps/findings.py --tracking-uri URI --name SWEEP [--out docs/results/mnist/findings.md]

Each finding gets a verdict and the numbers that decide it, from the per-cell means over repetitions
(sweeps.report.aggregate; where a cell ran at several base learning rates, the lr with the best mean
AUC, as the report plots it). The rules, stated once here and on every page:

* **Comparing two cells** (method A vs B, or one cell vs another) uses the 95% Welch t-interval of the
  difference of their means over repetitions. A > B when the interval lies above 0, A < B when below;
  A ties B when the whole interval lies within +-TIE_MARGIN points (a practically equal result); any
  other interval (it holds 0 but reaches past the margin, or a cell has n < 2) is *undecided*.
* **A finding** counts its cells as for / against / undecided and needs a stated share of its cells
  for it: **supported** when the cells for it reach that share, **not supported** when the cells
  against it make the share unreachable, otherwise **not decidable at n = k** (k = the fewest
  repetitions of a cell used): more repetitions would decide it.

Nothing is tuned to the paper's answer. Every deviation of the sweep from the paper's protocol is
stated at the top of the page (`deviations`).
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scipy.stats import t as student_t

from imbalance_core.result import ACCURACY_THRESHOLDED, AUC
from sweeps.report import SweepNotFound, _best_lr, aggregate, load_runs

SUPPORTED, NOT, NA = "supported", "not supported", "not checkable here"
UNDECIDABLE = "not decidable"                 # shown as "not decidable at n = k"
CONFIDENCE = 0.95
TIE_MARGIN = 1.0                              # AUC or accuracy points (x100) that count as practically equal
RULE = (f"{CONFIDENCE:.0%} Welch t-interval of the difference of two cells' means over repetitions: above 0 = "
        f"better, below 0 = worse, inside +-{TIE_MARGIN:g} point = tie, otherwise undecided")


# ------------------------------------------------------------------------------ comparing two cells

def interval(a: dict, b: dict, metric: str = AUC) -> tuple[float, float] | None:
    """The CONFIDENCE Welch t-interval of mean(a) - mean(b), or None when a cell has fewer than 2 runs."""
    ma, mb = a.get(f"{metric}_mean"), b.get(f"{metric}_mean")
    na, nb = a.get("n") or 0, b.get("n") or 0
    if ma is None or mb is None or na < 2 or nb < 2:
        return None
    va, vb = (a.get(f"{metric}_std") or 0.0) ** 2 / na, (b.get(f"{metric}_std") or 0.0) ** 2 / nb
    d, se = ma - mb, math.sqrt(va + vb)
    if se == 0:
        return (d, d)
    df = (va + vb) ** 2 / ((va ** 2 / (na - 1) if va else 0) + (vb ** 2 / (nb - 1) if vb else 0))
    h = student_t.ppf(0.5 + CONFIDENCE / 2, df) * se
    return (d - h, d + h)


def compare(a: dict, b: dict, metric: str = AUC) -> str:
    """'>' a better, '<' a worse, '=' a tie (interval within +-TIE_MARGIN), '?' undecided."""
    ci = interval(a, b, metric)
    if ci is None:
        return "?"
    lo, hi = ci
    if lo > 0:
        return ">"
    if hi < 0:
        return "<"
    if -TIE_MARGIN <= lo and hi <= TIE_MARGIN:
        return "="
    return "?"


def _ci_text(a: dict, b: dict, metric: str = AUC) -> str:
    ci = interval(a, b, metric)
    return "CI n/a (n < 2)" if ci is None else f"CI [{ci[0]:+.2f}, {ci[1]:+.2f}]"


@dataclass
class Tally:
    """Cells for / against / undecided, and the fewest repetitions behind them."""
    good: int = 0
    bad: int = 0
    open: int = 0
    n_min: int | None = None

    def add(self, outcome: bool | None, *rows: dict) -> None:
        if outcome is True:
            self.good += 1
        elif outcome is False:
            self.bad += 1
        else:
            self.open += 1
        for r in rows:
            n = r.get("n") or 0
            self.n_min = n if self.n_min is None else min(self.n_min, n)

    @property
    def total(self) -> int:
        return self.good + self.bad + self.open

    def verdict(self, share: float) -> str:
        if not self.total:
            return NA
        need = math.ceil(share * self.total - 1e-9)
        if self.good >= need:
            return SUPPORTED
        if self.good + self.open < need:
            return NOT
        return f"{UNDECIDABLE} at n = {self.n_min}"

    def text(self, share: float) -> str:
        return (f"{self.good} for, {self.bad} against, {self.open} undecided of {self.total} "
                f"(supported at >= {share:.0%} for)")


def combine(*verdicts: str) -> str:
    """All parts supported -> supported; any part not supported -> not supported; else the undecided one."""
    if all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    if any(v == NOT for v in verdicts):
        return NOT
    if any(v == NA for v in verdicts):
        return NA
    return next(v for v in verdicts if v.startswith(UNDECIDABLE))


# ------------------------------------------------------------------------------------- grouping

def _cells(rows):
    """{(dataset, imbalance, rho, mu): {method: row}} for the imbalanced cells (no partial levels)."""
    out = defaultdict(dict)
    for r in rows:
        if r["imbalance"] in ("step", "linear") and r["level"] is None:
            out[(r["dataset"], r["imbalance"], r["rho"], r["mu"])][r["method"]] = r
    return out


def _series(rows, method, imbalance, mu=None, dataset=None):
    """[(rho, row)] of one method along rho, by dataset (and mu for step)."""
    return sorted(((r["rho"], r) for r in rows if r["method"] == method and r["imbalance"] == imbalance
                   and r["level"] is None and (mu is None or r["mu"] == mu)
                   and (dataset is None or r["dataset"] == dataset)), key=lambda t: t[0])


def _series_keys(rows):
    """(dataset, imbalance, mu or None) of every series along rho."""
    keys = set()
    for r in rows:
        if r["imbalance"] == "step":
            keys.add((r["dataset"], "step", r["mu"]))
        elif r["imbalance"] == "linear":
            keys.add((r["dataset"], "linear", None))
    return sorted(keys, key=lambda k: (k[0], k[1], k[2] or 0))


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _name(key) -> str:
    ds, imb, mu = key
    return f"{ds} {imb}{'' if mu is None else f' mu {mu:g}'}"


# ---------------------------------------------------------------------------------------- checks

def imbalance_hurts(rows):
    falls, above, text = Tally(), Tally(), []
    for key in _series_keys(rows):
        s = _series(rows, "baseline", key[1], key[2], key[0])
        if len(s) < 2:
            continue
        (rho0, first), (rho1, last) = s[0], s[-1]
        c = compare(last, first)
        falls.add(True if c == "<" else (None if c == "?" else False), first, last)
        text.append(f"baseline {_name(key)}: AUC " + ", ".join(f"rho {rho:g}: {_fmt(r['auc_mean'])}" for rho, r in s)
                    + f"; rho {rho1:g} minus rho {rho0:g}: {_ci_text(last, first)} -> {c}")
        bal = [r for r in rows if r["imbalance"] == "balanced" and r["method"] == "baseline"
               and r["dataset"] == key[0]]
        if bal:
            for _, r in s:
                c2 = compare(r, bal[0])
                above.add(False if c2 == ">" else (None if c2 == "?" else True), r, bal[0])
    for r in rows:
        if r["imbalance"] == "balanced" and r["method"] == "baseline":
            text.insert(0, f"balanced baseline {r['dataset']} AUC {r['auc_mean']:.2f} (n = {r['n']})")
    verdict = combine(falls.verdict(1.0), above.verdict(1.0)) if above.total else falls.verdict(1.0)
    return ("Imbalance hurts, more as rho grows", verdict,
            f"in every series the baseline's AUC at the largest rho is below the smallest rho's "
            f"({falls.text(1.0)}), and no imbalanced cell is above the balanced set ({above.text(1.0)})", text)


def task_difficulty(rows):
    return ("... and more as the task grows harder", NA,
            "needs CIFAR-10 and ImageNet runs beside MNIST", [])


def step_vs_linear(rows):
    tally, lines = Tally(), []
    for ds in sorted({r["dataset"] for r in rows}):
        step = {rho: r for rho, r in _series(rows, "baseline", "step", 0.5, ds)}
        for rho, lin in _series(rows, "baseline", "linear", None, ds):
            if rho in step:
                c = compare(step[rho], lin)
                tally.add(True if c == "<" else (None if c == "?" else False), step[rho], lin)
                lines.append(f"{ds} rho {rho:g}: step (mu .5) {_fmt(step[rho]['auc_mean'])} vs linear "
                             f"{_fmt(lin['auc_mean'])}, step minus linear {_ci_text(step[rho], lin)} -> {c}")
    return ("Step imbalance hurts more than linear at the same rho and amount of data", tally.verdict(0.75),
            f"baseline AUC lower for step (mu 0.5, the same total examples as linear) than linear: {tally.text(0.75)}",
            lines)


def _wins_or_ties(m: dict, winner: str, metric: str) -> tuple[bool | None, list[str]]:
    """Is `winner` best or tied among the methods of cell `m`? False if some method beats it, None if open."""
    outcomes = {k: compare(r, m[winner], metric) for k, r in m.items() if k != winner}
    beaten = [k for k, c in outcomes.items() if c == ">"]
    if beaten:
        return False, beaten
    if all(c in ("<", "=") for c in outcomes.values()):
        return True, []
    return None, [k for k, c in outcomes.items() if c == "?"]


def ros_wins_or_ties(rows):
    tally, lines = Tally(), []
    for key, m in sorted(_cells(rows).items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3] or 0)):
        if "ros" not in m or len(m) < 2:
            continue
        ok, who = _wins_or_ties(m, "ros", AUC)
        tally.add(ok, *m.values())
        if ok is False:
            lines.append(f"{key[0]} {key[1]} rho {key[2]:g} mu {key[3]:g}: ROS {_fmt(m['ros']['auc_mean'])} beaten by "
                         + ", ".join(f"{k} {_fmt(m[k]['auc_mean'])} ({_ci_text(m[k], m['ros'])})" for k in who))
        elif ok is None:
            lines.append(f"{key[0]} {key[1]} rho {key[2]:g} mu {key[3]:g}: undecided against " + ", ".join(
                f"{k} {_fmt(m[k]['auc_mean'])} ({_ci_text(m[k], m['ros'])})" for k in who))
    return ("ROS wins or ties almost everywhere", tally.verdict(0.8),
            f"no method's AUC above ROS's in a cell: {tally.text(0.8)}; cells it lost or left open are listed",
            lines)


def two_phase_between(rows):
    tallies, lines = [], []
    for base in ("ros", "rus"):
        tally = Tally()
        for key, m in sorted(_cells(rows).items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3] or 0)):
            tp = m.get(f"two-phase-{base}")
            if not tp or base not in m or "baseline" not in m:
                continue
            lo, hi = sorted((m["baseline"], m[base]), key=lambda r: r["auc_mean"])
            c_lo, c_hi = compare(tp, lo), compare(tp, hi)
            ok = (False if c_lo == "<" or c_hi == ">" else
                  True if c_lo in (">", "=") and c_hi in ("<", "=") else None)
            tally.add(ok, tp, lo, hi)
            if ok is not True:
                lines.append(f"{key[0]} {key[1]} rho {key[2]:g} mu {key[3]:g}: two-phase {base.upper()} "
                             f"{_fmt(tp['auc_mean'])}, baseline {_fmt(m['baseline']['auc_mean'])}, {base.upper()} "
                             f"{_fmt(m[base]['auc_mean'])}: {'outside' if ok is False else 'undecided'}")
        tallies.append(tally)
        lines.insert(len(tallies) - 1, f"two-phase {base.upper()} between baseline and {base.upper()}: "
                                       + tally.text(0.75))
    both = Tally(sum(t.good for t in tallies), sum(t.bad for t in tallies), sum(t.open for t in tallies),
                 min((t.n_min for t in tallies if t.n_min is not None), default=None))
    return ("Two-phase lands between the baseline and its base method", both.verdict(0.75),
            "two-phase's AUC not below the lower and not above the higher of baseline and its base method "
            f"(tie counts as between): {both.text(0.75)}", lines)


def rus_linear_in_rho(rows):
    tally, lines = Tally(), []
    for key in _series_keys(rows):
        s = _series(rows, "rus", key[1], key[2], key[0])
        if len(s) < 3:
            continue
        x = [math.log10(rho) for rho, _ in s]
        y = [r["auc_mean"] for _, r in s]
        mx, my = sum(x) / len(x), sum(y) / len(y)
        sxx = sum((a - mx) ** 2 for a in x)
        sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
        syy = sum((b - my) ** 2 for b in y)
        r = sxy / math.sqrt(sxx * syy) if sxx and syy else 0.0
        c = compare(s[-1][1], s[0][1])
        ok = True if (c == "<" and r <= -0.9) else (None if c == "?" else False)
        tally.add(ok, *(row for _, row in s))
        lines.append(f"RUS {_name(key)}: slope {sxy / sxx:.2f} AUC points per decade of rho, Pearson r {r:.2f}; "
                     f"rho {s[-1][0]:g} minus rho {s[0][0]:g}: {_ci_text(s[-1][1], s[0][1])} -> {c}")
    return ("RUS degrades roughly linearly with rho (log scale, as the paper plots it)", tally.verdict(0.75),
            "a series is for it when RUS's AUC at the largest rho is below the smallest rho's and AUC vs "
            f"log10(rho) has Pearson r <= -0.9 on the means: {tally.text(0.75)}", lines)


def partial_levels(rows):
    title = "Full ROS is the best ROS level; an intermediate RUS level can beat full RUS"
    part = [r for r in rows if r["method"] in ("partial-ros", "partial-rus")]
    if not part:
        return (title, NA, "no partial-sampling runs in this sweep", [])
    ds, rho, mu = part[0]["dataset"], part[0]["rho"], part[0]["mu"]
    part = [r for r in part if (r["dataset"], r["rho"], r["mu"]) == (ds, rho, mu)]     # one cell: the first one
    cell = {r["method"]: r for r in rows if r["imbalance"] == "step" and (r["dataset"], r["rho"], r["mu"]) ==
            (ds, rho, mu) and r["level"] is None}
    lines, ros, rus = [], Tally(), Tally()
    for kind in ("ros", "rus"):
        full = cell.get(kind)
        levels = sorted(((r["level"], r) for r in part if r["method"] == f"partial-{kind}"), key=lambda t: t[0])
        lines.append(f"{kind.upper()} at rho {rho:g}: full {_fmt(full and full['auc_mean'])}; "
                     + ", ".join(f"level {lv:g}: {_fmt(r['auc_mean'])}"
                                 + (f" ({_ci_text(r, full)} vs full)" if full else "") for lv, r in levels)
                     + f"; none (baseline) {_fmt(cell.get('baseline', {}).get('auc_mean'))}")
        if full is None or not levels:
            continue
        outcomes = [compare(r, full) for _, r in levels]
        rows_used = [full] + [r for _, r in levels]
        if kind == "ros":          # for: no level above full ROS; against: some level above it
            ros.add(False if ">" in outcomes else (True if all(c in ("<", "=") for c in outcomes) else None),
                    *rows_used)
        else:                      # for: some level above full RUS; against: every level at or below it
            rus.add(True if ">" in outcomes else (False if all(c in ("<", "=") for c in outcomes) else None),
                    *rows_used)
    verdict = combine(ros.verdict(1.0), rus.verdict(1.0)) if ros.total and rus.total else NA
    return (title, verdict, f"no partial ROS level's AUC above full ROS ({ros.text(1.0)}); some partial RUS "
            f"level's AUC above full RUS ({rus.text(1.0)})", lines)


def thresholding(rows):
    raised, ros_best, lines = Tally(), Tally(), []
    for key, m in sorted(_cells(rows).items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3] or 0)):
        b = m.get("baseline")
        if not b:
            continue
        plain = {**b, "accuracy_thresholded_mean": b["accuracy_mean"], "accuracy_thresholded_std": b["accuracy_std"]}
        c = compare(b, plain, ACCURACY_THRESHOLDED)
        raised.add(True if c == ">" else (None if c == "?" else False), b)
        if "ros" in m:
            ok, _ = _wins_or_ties(m, "ros", ACCURACY_THRESHOLDED)
            ros_best.add(ok, *m.values())
        lines.append(f"{key[0]} {key[1]} rho {key[2]:g} mu {key[3]:g}: baseline accuracy {_fmt(b['accuracy_mean'])} -> "
                     f"{_fmt(b['accuracy_thresholded_mean'])} thresholded ({_ci_text(b, plain, 'accuracy_thresholded')}"
                     f" -> {c})")
    verdict = combine(raised.verdict(0.8), ros_best.verdict(0.5)) if raised.total else NA
    return ("Thresholding raises accuracy, best together with ROS", verdict,
            f"thresholding raises the baseline's accuracy ({raised.text(0.8)}; Welch interval, conservative for "
            f"these paired runs) and no method's thresholded accuracy is above ROS's ({ros_best.text(0.5)})", lines)


def reference_error(rows):
    title = "LeNet-5 on balanced MNIST: error < 1%"
    bal = [r for r in rows if r["imbalance"] == "balanced" and r["method"] == "baseline"
           and r["dataset"] == "mnist"]
    if not bal:
        return (title, NA, "no balanced full-MNIST run in this sweep", [])
    r = bal[0]
    err, n, sd = 100 - r["accuracy_mean"], r["n"], r.get("accuracy_std")
    if n < 2 or sd is None:
        return (title, f"{UNDECIDABLE} at n = {n}", f"balanced baseline test error {err:.2f}% from {n} run: no "
                "interval", [])
    h = student_t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n)
    verdict = SUPPORTED if err + h < 1 else (NOT if err - h >= 1 else f"{UNDECIDABLE} at n = {n}")
    where = {SUPPORTED: "entirely below 1%", NOT: "entirely at or above 1%"}.get(verdict, "it holds 1%")
    return (title, verdict, f"balanced baseline test error {err:.3f}%, {CONFIDENCE:.0%} t-interval "
            f"[{err - h:.3f}, {err + h:.3f}]% over {n} runs: {where}", [])


CHECKS = (imbalance_hurts, task_difficulty, step_vs_linear, ros_wins_or_ties, two_phase_between,
          rus_linear_in_rho, partial_levels, thresholding, reference_error)


def findings(rows) -> list[tuple[str, str, str, list[str]]]:
    """Verdicts on aggregated rows; a cell run at several base lrs counts with its best-AUC lr."""
    return [check(_best_lr(rows)) for check in CHECKS]


# ----------------------------------------------------------------------------------- deviations

# How every run of this project differs from the paper's protocol, whatever the sweep (README's choices table).
STANDING_DEVIATIONS = (
    "MNIST's test set balanced to 892 images per class (the smallest class; the paper does not say how it "
    "balanced it)",
    "each epoch reshuffles the network's fixed training set (Caffe read its database in the order written)",
    "a two-phase network shares its phase 1 with the plain ROS/RUS network of the same seed (the same network "
    "by construction; their results are paired, not independent draws)",
    "PyTorch's SGD applies the learning rate after the momentum buffer, Caffe's before (identical at a constant "
    "lr; LeNet's inv lr changes by < 0.01% per iteration)",
)


def deviations(runs: list[dict]) -> list[str]:
    """Every way the runs differ from the paper's protocol (STUDY.md), read from their MLflow params."""
    from imbalance_core.specs import get as dataset_spec
    from imbalance_core.train import SCHEDULES
    from sweeps.grids import CIFAR10_MUS, CIFAR10_RHOS, MNIST_MUS, MNIST_RHOS

    paper = {"mnist": (MNIST_RHOS, MNIST_MUS, 50), "cifar10": (CIFAR10_RHOS, CIFAR10_MUS, 2),
             "imagenet": ((10, 50, 100), (0.1, 0.8, 0.9), 3)}
    out = []
    for ds in sorted({r["dataset"] for r in runs}):
        rs = [r for r in runs if r["dataset"] == ds]
        if ds not in paper:
            out.append(f"{ds}: not one of the paper's datasets (a stand-in for quick runs)")
        sched = SCHEDULES.get(ds)
        its = sorted({int(r["iterations"]) if r.get("iterations") is not None else sched.iterations
                      for r in rs}) if sched else []
        if sched and its != [sched.iterations]:
            out.append(f"{ds}: {', '.join(f'{i:,}' for i in its)} iterations per phase instead of the paper's "
                       f"{sched.iterations:,} ({max(its) / sched.iterations:.0%} of its budget at most)")
        try:
            spec_n = dataset_spec(ds).n_per_class
        except (KeyError, ValueError):
            spec_n = None
        # the runs log the batch size they trained with (and n_per_class when it was overridden): only a
        # value other than the paper's is a deviation
        for field, what, theirs in (("batch_size", "batch size", sched.batch_size if sched else None),
                                    ("n_per_class", "examples per class before imbalance", spec_n)):
            vals = sorted({r.get(field) for r in rs if r.get(field) is not None and r.get(field) != theirs})
            if vals:
                out.append(f"{ds}: {what} set to {', '.join(f'{v:g}' for v in vals)} instead of the paper's"
                           + (f" {theirs:g}" if theirs is not None else ""))
        if ds in paper:
            rhos, mus, reps = paper[ds]
            seeds = defaultdict(set)
            for r in rs:
                seeds[(r["imbalance"], r["rho"], r["mu"], r["method"], r["level"], r["lr"])].add(r.get("seed"))
            n = sorted({len(v) for v in seeds.values()})
            if n and max(n) < reps:
                out.append(f"{ds}: {'-'.join(map(str, sorted({n[0], n[-1]})))} repetitions per cell instead of "
                           f"{reps}")
            got_rho = sorted({r["rho"] for r in rs if r["imbalance"] in ("step", "linear")})
            got_mu = sorted({r["mu"] for r in rs if r["imbalance"] == "step"})
            if got_rho and set(got_rho) != set(map(float, rhos)):
                out.append(f"{ds}: rho in {{{', '.join(f'{v:g}' for v in got_rho)}}} of the paper's "
                           f"{{{', '.join(f'{v:g}' for v in rhos)}}}")
            if got_mu and set(got_mu) != set(map(float, mus)):
                out.append(f"{ds}: step mu in {{{', '.join(f'{v:g}' for v in got_mu)}}} of the paper's "
                           f"{{{', '.join(f'{v:g}' for v in mus)}}}")
            if ds == "cifar10":
                lrs = sorted({r["lr"] for r in rs if r["lr"] is not None})
                if len(lrs) < 4:
                    out.append(f"cifar10: base lr searched over {lrs or 'the default only'} instead of 4 values")
    return out + list(STANDING_DEVIATIONS)


def write_markdown(results, sweep: str, path: Path, preamble: str = "", runs: list[dict] | None = None) -> None:
    out = [f"# The paper's findings, checked against sweep `{sweep}`", "", preamble, ""]
    if runs is not None:
        out += ["## How this run differs from the paper's protocol", ""] + [f"- {d}" for d in deviations(runs)] + [""]
    out += ["## How verdicts are decided", "", __doc__.split("The rules, stated once here and on every page:")[1]
            .split("Nothing is tuned")[0].strip(), "",
            "| finding | verdict | rule |", "|---|---|---|"]
    out += [f"| {f} | **{v}** | {rule} |" for f, v, rule, _ in results]
    for f, v, rule, lines in results:
        out += ["", f"## {f}: {v}", "", rule + ".", ""] + [f"- {ln}" for ln in lines]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", default=None, help="default: reports/<name>/findings.md")
    ap.add_argument("--preamble", default="", help="text placed under the title (what the run is)")
    a = ap.parse_args(argv)
    try:
        _, runs = load_runs(a.tracking_uri, a.name)
    except SweepNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = findings(aggregate(runs))
    out = Path(a.out or f"reports/{a.name}/findings.md")
    write_markdown(res, a.name, out, a.preamble, runs=runs)
    for f, v, rule, _ in res:
        print(f"{v:>24s}  {f}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
