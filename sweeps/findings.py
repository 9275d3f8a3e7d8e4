"""Check the paper's findings (STUDY.md, "What the paper found") against a sweep's runs in MLflow.

    python sweeps/findings.py --tracking-uri URI --name SWEEP [--out docs/results/mnist/findings.md]

Each finding gets a verdict and the numbers that decide it, read from the sweep's networks one by one
(`sweeps.report.load_runs`: seed, cell, method, level, lr, metrics, test-set size), not from cell means.
The rules, stated once here and on every page:

* **Which cells.** Where a cell was run at several base learning rates, each method counts with the lr
  of its best mean AUC (the paper's lr search, as the report plots it). Metrics are x100 (AUC, accuracy).
* **Two methods of one cell** (the same dataset, imbalance, rho and mu) are compared **paired by seed**:
  a seed gives every method of a cell the same imbalanced subset, the same minority classes and the same
  initial weights, so per seed A's network minus B's network is one difference, and the 95% t-interval
  of the mean of the n differences (n - 1 df) decides. A seed that one of the two lacks is left out, and
  the line says so ("n = 2 pairs; seed 2 missing for ros"). Thresholded against plain accuracy is paired
  the same way: the same networks, scored twice.
* **Two different cells** (one rho against another, step against linear, an imbalanced cell against the
  balanced set) hold different subsets: they are compared **unpaired**, by the 95% Welch t-interval of
  the difference of their means, and their lines say "Welch".
* **Reading an interval, in this order:** a **tie** (A = B) when the whole interval lies within +-m,
  even when it excludes 0; else A > B when it lies above 0, A < B when below 0; otherwise (it holds 0
  and reaches past +-m, or there are fewer than 2 pairs / runs a side) **undecided**. The tie margin is
  relative on the error scale: m = 10% of the smaller error (100 - mean) of the two means compared, and
  never less than 0.05 points (about 4 of MNIST's 8,920 test images): 1 point near AUC 90, 0.3 near 97,
  0.05 near 99.9 and above, where 10% of a tiny error would make every measurable difference a win.
* **A finding** counts its cells (or series) as for / against / undecided and needs a stated share of
  them for it: 80% for a claim about most cells ("almost everywhere", "lands between", "hurts more",
  "roughly linearly", "raises", "best together"), every one for "in every series" claims, at least one
  for "can". **Supported** when the cells for it reach that share, **not supported** when the cells
  against it make the share unreachable, otherwise **not decidable at n = k** (k = the fewest pairs or
  repetitions behind a compared cell): more repetitions would decide it ("not decidable with N test
  images" where they would not: the reference error below).
* **RUS roughly linear in log rho:** per series (dataset, imbalance, mu) with RUS at >= 5 rho values,
  each seed that ran all of them gets two least-squares fits of its RUS AUC against log10(rho): a line,
  whose change from the smallest to the largest rho is that seed's *drop*, and a quadratic c x^2 + ...,
  whose *bend* c w^2 / 4 (w = the width of the rho range in decades) is the largest gap between the
  quadratic and the straight line through its two ends. The 95% t-intervals over seeds (>= 2 seeds) of
  the mean drop and the mean bend decide: for = the drop is below 0 (not a tie, margin m of the two
  ends' means) and the bend is a tie with 0 within +-20% of the mean drop's size (at least 0.05 points);
  against = the drop is a tie or above 0, or the bend's interval excludes 0 past that margin; otherwise
  undecided. Fewer than 2 seeds with all of them: not decidable at n = that count; a series with fewer
  than 5 rho values is listed but not counted (no curvature to test), and a sweep with no series of 5
  is "not checkable here".
* **Balanced MNIST error < 1%** (the paper's LeNet-5 reference), one-sided: e = mean test error (100 -
  accuracy) over the k balanced baseline networks; its variance is s^2 / k (s = the sample sd between
  seeds) plus the test set's own sampling error, the mean over the networks of e_i (100 - e_i) / N_i
  (each error a binomial proportion over its N_i test examples), not divided by k because every network
  is scored on the same test set, so that error does not average out over seeds. The degrees of freedom
  are Welch-Satterthwaite's (the binomial term counts as known). Supported when the one-sided 95% upper
  bound e + t * se is below 1%; not supported when the one-sided 95% lower bound e - t * se is at or
  above 1%; otherwise not decidable (at n = k, or "with N test images" when the test-set term alone,
  at z = 1.645, already reaches 1%: more seeds cannot decide it).

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
from statistics import fmean as mean
from statistics import stdev

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from scipy.stats import norm
from scipy.stats import t as student_t

from imbalance_core import methods as M
from imbalance_core.result import ACCURACY, ACCURACY_THRESHOLDED, AUC
from sweeps.report import (CONFIDENCE, TIE_FLOOR, Diff, SweepNotFound, best_lr_runs, fill_test_examples,
                           load_runs, paired, t_half_width, tie_margin, welch)

SUPPORTED, NOT, NA = "supported", "not supported", "not checkable here"
UNDECIDABLE = "not decidable"                 # "not decidable at n = k", or "... with N test images"
MOST, EVERY, ANY = 0.8, 1.0, None             # shares of cells a finding needs (ANY: at least one)
MIN_RHOS = 5                                  # rho values a curvature needs (RUS roughly linear)
BEND_SHARE = 0.2                              # a bend within +-20% of the drop is "roughly linear"
REFERENCE_ERROR = 1.0                         # LeNet-5's balanced MNIST error, the paper's reference (%)
FIT = "per-seed fit"                          # Diff kind of an interval over seeds of a per-seed quantity


# ------------------------------------------------------------------------------------- the data

def needs_level(method: str) -> bool:
    """A method swept over partial-sampling levels (its spec's `needs_level`); unknown methods are whole."""
    try:
        return M.get(method).needs_level
    except ValueError:
        return False


def _none_last(v):
    return (v is None, v or 0.0)


def _cells(runs) -> dict[tuple, dict[str, list[dict]]]:
    """{(dataset, imbalance, rho, mu): {method: runs}} of the imbalanced cells, whole methods only (no levels)."""
    out: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    partial = {m for m in {r["method"] for r in runs} if needs_level(m)}
    for r in runs:
        if r["imbalance"] in ("step", "linear") and r["method"] not in partial:
            out[(r["dataset"], r["imbalance"], r["rho"], r["mu"])][r["method"]].append(r)
    return {k: out[k] for k in sorted(out, key=lambda k: (k[0], k[1], _none_last(k[2]), _none_last(k[3])))}


def _series(runs, method, imbalance, mu=None, dataset=None) -> list[tuple[float, list[dict]]]:
    """[(rho, runs)] of one method along rho, by dataset (and mu for step)."""
    by: dict[float, list[dict]] = defaultdict(list)
    for r in runs:
        if (r["method"] == method and r["imbalance"] == imbalance and r["level"] is None
                and (mu is None or r["mu"] == mu) and (dataset is None or r["dataset"] == dataset)):
            by[r["rho"]].append(r)
    return sorted(by.items())


def _series_keys(runs):
    """(dataset, imbalance, mu or None) of every series along rho."""
    keys = set()
    for r in runs:
        if r["imbalance"] == "step":
            keys.add((r["dataset"], "step", r["mu"]))
        elif r["imbalance"] == "linear":
            keys.add((r["dataset"], "linear", None))
    return sorted(keys, key=lambda k: (k[0], k[1], k[2] or 0))


def _balanced(runs, dataset, method="baseline"):
    return [r for r in runs if r["imbalance"] == "balanced" and r["method"] == method and r["dataset"] == dataset]


def _mean(runs, metric=AUC) -> float | None:
    vals = [r[metric] for r in runs if r.get(metric) is not None]
    return mean(vals) if vals else None


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _name(key) -> str:
    ds, imb, mu = key
    return f"{ds} {imb}{'' if mu is None else f' mu {mu:g}'}"


def _cell_name(key) -> str:
    return f"{key[0]} {key[1]} rho {key[2]:g} mu {key[3]:g}"


def _n(d: Diff) -> int:
    """The repetitions behind a comparison: its pairs, or the smaller side of a Welch one."""
    return d.n if d.n_b is None else min(d.n, d.n_b)


# ------------------------------------------------------------------------------------ counting cells

@dataclass
class Tally:
    """Cells for / against / undecided, and the fewest repetitions (pairs, or runs of a side) behind them."""
    good: int = 0
    bad: int = 0
    open: int = 0
    n_min: int | None = None

    def add(self, outcome: bool | None, n: int) -> None:
        """Count one cell: True for, False against, None undecided; `n` the repetitions that decided it."""
        if outcome is True:
            self.good += 1
        elif outcome is False:
            self.bad += 1
        else:
            self.open += 1
        self.n_min = n if self.n_min is None else min(self.n_min, n)

    @property
    def total(self) -> int:
        return self.good + self.bad + self.open

    def need(self, share: float | None) -> int:
        return 1 if share is ANY else max(1, math.ceil(share * self.total - 1e-9))

    def verdict(self, share: float | None) -> str:
        """SUPPORTED when the cells for it reach the share, NOT when those against make it unreachable."""
        if not self.total:
            return NA
        need = self.need(share)
        if self.good >= need:
            return SUPPORTED
        if self.good + self.open < need:
            return NOT
        return f"{UNDECIDABLE} at n = {self.n_min}"

    def text(self, share: float | None) -> str:
        at = "with at least 1 for" if share is ANY else f"at >= {share:.0%} for"
        return f"{self.good} for, {self.bad} against, {self.open} undecided of {self.total} (supported {at})"


def combine(*verdicts: str) -> str:
    """All parts supported -> supported; any part not supported -> not supported; else the undecided one."""
    if all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    if any(v == NOT for v in verdicts):
        return NOT
    if any(v == NA for v in verdicts):
        return NA
    return next(v for v in verdicts if v.startswith(UNDECIDABLE))


def _for(c: str, want: str) -> bool | None:
    """A comparison's outcome as a cell's count: True when it is `want`, None when undecided, else False."""
    return True if c == want else (None if c == "?" else False)


# ---------------------------------------------------------------------------------------- checks

def imbalance_hurts(runs):
    falls, above, text = Tally(), Tally(), []
    for key in _series_keys(runs):
        s = _series(runs, "baseline", key[1], key[2], key[0])
        if len(s) < 2:
            continue
        (rho0, first), (rho1, last) = s[0], s[-1]
        d = welch(last, first, AUC)
        falls.add(_for(d.outcome, "<"), _n(d))
        text.append(f"baseline {_name(key)}: AUC " + ", ".join(f"rho {rho:g}: {_fmt(_mean(r))}" for rho, r in s)
                    + f"; rho {rho1:g} minus rho {rho0:g}: {d.text()}")
        bal = _balanced(runs, key[0])
        if bal:
            for rho, r in s:
                d2 = welch(r, bal, AUC)
                above.add(False if d2.outcome == ">" else (None if d2.outcome == "?" else True), _n(d2))
                if d2.outcome in (">", "?"):
                    text.append(f"baseline {_name(key)} rho {rho:g} minus balanced: {d2.text()}")
    for ds in sorted({r["dataset"] for r in runs}):
        bal = _balanced(runs, ds)
        if bal:
            text.insert(0, f"balanced baseline {ds} AUC {_fmt(_mean(bal))} (n = {len(bal)})")
    verdict = combine(falls.verdict(EVERY), above.verdict(EVERY)) if above.total else falls.verdict(EVERY)
    return ("Imbalance hurts, more as rho grows", verdict,
            f"in every series the baseline's AUC at the largest rho is below the smallest rho's "
            f"({falls.text(EVERY)}), and no imbalanced cell is above the balanced set ({above.text(EVERY)}); "
            "different cells: Welch, unpaired", text)


def task_difficulty(runs):
    return ("... and more as the task grows harder", NA,
            "needs CIFAR-10 and ImageNet runs beside MNIST", [])


def step_vs_linear(runs):
    tally, lines = Tally(), []
    for ds in sorted({r["dataset"] for r in runs}):
        step = dict(_series(runs, "baseline", "step", 0.5, ds))
        for rho, lin in _series(runs, "baseline", "linear", None, ds):
            if rho in step:
                d = welch(step[rho], lin, AUC)
                tally.add(_for(d.outcome, "<"), _n(d))
                lines.append(f"{ds} rho {rho:g}: step (mu .5) {_fmt(_mean(step[rho]))} vs linear {_fmt(_mean(lin))}, "
                             f"step minus linear {d.text()}")
    return ("Step imbalance hurts more than linear at the same rho and amount of data", tally.verdict(MOST),
            "baseline AUC lower for step (mu 0.5, the same total examples as linear) than linear; different "
            f"subsets: Welch, unpaired: {tally.text(MOST)}", lines)


def _wins_or_ties(m: dict, winner: str, metric: str) -> tuple[bool | None, int, dict[str, Diff]]:
    """Does `winner` win or tie against every other method of cell `m` (paired by seed)? False if some method is
    above it, None if some comparison is undecided; with the fewest pairs and every comparison (other - winner)."""
    diffs = {k: paired(rs, m[winner], metric, names=(k, winner)) for k, rs in m.items() if k != winner}
    outcomes = [d.outcome for d in diffs.values()]
    ok = False if ">" in outcomes else (True if all(c in ("<", "=") for c in outcomes) else None)
    return ok, min(d.n for d in diffs.values()), diffs


def _diff_list(m, diffs, metric=AUC, only=("?", ">")) -> str:
    return ", ".join(f"{k} {_fmt(_mean(m[k], metric))} (minus it: {d.text()})" for k, d in diffs.items()
                     if d.outcome in only or d.note)


def _paper_methods(m: dict) -> dict:
    """The paper's own methods of a cell (family "paper"): the paper's claims compare those, not the methods
    that followed it (a `beyond` sweep's LA loss above ROS does not contradict "ROS wins or ties")."""
    def paper(name):
        try:
            return M.get(name).family == "paper"
        except ValueError:
            return False
    return {k: v for k, v in m.items() if paper(k)}


def ros_wins_or_ties(runs):
    tally, lines = Tally(), []
    for key, m in _cells(runs).items():
        m = _paper_methods(m)
        if "ros" not in m or len(m) < 2:
            continue
        ok, n, diffs = _wins_or_ties(m, "ros", AUC)
        tally.add(ok, n)
        if ok is not True or any(d.note for d in diffs.values()):
            what = {False: "beaten by", None: "undecided against", True: "wins or ties; seeds missing:"}[ok]
            lines.append(f"{_cell_name(key)}: ROS {_fmt(_mean(m['ros']))} {what} " + _diff_list(m, diffs))
    return ("ROS wins or ties almost everywhere", tally.verdict(MOST),
            f"none of the paper's other methods has an AUC above ROS's in a cell, paired by seed: {tally.text(MOST)}; "
            "cells it lost or left open are listed", lines)


def two_phase_between(runs):
    tallies, lines = [], []
    for base in ("ros", "rus"):
        tally, cell_lines = Tally(), []
        for key, m in _cells(runs).items():
            tp = m.get(f"two-phase-{base}")
            if not tp or base not in m or "baseline" not in m:
                continue
            lo, hi = sorted(("baseline", base), key=lambda k: -math.inf if _mean(m[k]) is None else _mean(m[k]))
            d_lo = paired(tp, m[lo], AUC, names=(f"two-phase-{base}", lo))
            d_hi = paired(tp, m[hi], AUC, names=(f"two-phase-{base}", hi))
            ok = (False if d_lo.outcome == "<" or d_hi.outcome == ">" else
                  True if d_lo.outcome in (">", "=") and d_hi.outcome in ("<", "=") else None)
            tally.add(ok, min(d_lo.n, d_hi.n))
            if ok is not True:
                cell_lines.append(f"{_cell_name(key)}: two-phase {base.upper()} {_fmt(_mean(tp))}, baseline "
                                  f"{_fmt(_mean(m['baseline']))}, {base.upper()} {_fmt(_mean(m[base]))}: "
                                  f"{'outside' if ok is False else 'undecided'}; minus {lo}: {d_lo.text()}; minus "
                                  f"{hi}: {d_hi.text()}")
        tallies.append(tally)
        lines += [f"two-phase {base.upper()} between baseline and {base.upper()}: {tally.text(MOST)}"] + cell_lines
    both = Tally(sum(t.good for t in tallies), sum(t.bad for t in tallies), sum(t.open for t in tallies),
                 min((t.n_min for t in tallies if t.n_min is not None), default=None))
    return ("Two-phase lands between the baseline and its base method", both.verdict(MOST),
            "two-phase's AUC not below the lower and not above the higher of baseline and its base method, paired "
            f"by seed (a tie counts as between): {both.text(MOST)}", lines)


def _over_seeds(values: list[float], margin: float) -> Diff:
    """The t-interval over seeds of the mean of a per-seed quantity, read with a tie margin like a difference."""
    h = t_half_width(values)
    est = mean(values)
    return Diff(FIT, est, None if h is None else (est - h, est + h), len(values), margin)


def rus_linear_in_rho(runs):
    tally, lines = Tally(), []
    for key in _series_keys(runs):
        s = _series(runs, "rus", key[1], key[2], key[0])
        if len(s) < 2:
            continue
        rhos = [rho for rho, _ in s]
        if len(rhos) < MIN_RHOS:
            lines.append(f"RUS {_name(key)}: rho {', '.join(f'{v:g}' for v in rhos)}: {len(rhos)} values; a bend needs "
                         f">= {MIN_RHOS}: not checkable")
            continue
        per_rho = [{r["seed"]: r[AUC] for r in rs if r.get("seed") is not None and r.get(AUC) is not None}
                   for _, rs in s]
        seeds = sorted(set.intersection(*(set(v) for v in per_rho)))
        dropped = sorted(set().union(*(set(v) for v in per_rho)) - set(seeds))
        left_out = f"; seeds without every rho, left out: {', '.join(f'{v:g}' for v in dropped)}" if dropped else ""
        if len(seeds) < 2:
            tally.add(None, len(seeds))
            lines.append(f"RUS {_name(key)}: {len(seeds)} seed(s) ran all {len(rhos)} rho values: not decidable"
                         + left_out)
            continue
        x = np.log10(rhos)
        w = float(x[-1] - x[0])
        drops, bends = [], []
        for sd in seeds:
            y = np.array([v[sd] for v in per_rho])
            drops.append(float(np.polyfit(x, y, 1)[0]) * w)
            bends.append(float(np.polyfit(x, y, 2)[0]) * w * w / 4)
        drop = _over_seeds(drops, tie_margin(_mean(s[0][1]), _mean(s[-1][1])))
        bend = _over_seeds(bends, max(TIE_FLOOR, BEND_SHARE * abs(drop.estimate)))
        ok = (True if drop.outcome == "<" and bend.outcome == "=" else
              False if drop.outcome in ("=", ">") or bend.outcome in ("<", ">") else None)
        tally.add(ok, len(seeds))
        lines.append(f"RUS {_name(key)}, rho {rhos[0]:g} to {rhos[-1]:g} ({len(rhos)} values, {w:.2f} decades): "
                     f"drop {drop.text()}; bend {bend.text()}"
                     f" -> {'roughly linear decline' if ok else 'not a linear decline' if ok is False else 'undecided'}"
                     + left_out)
    title = "RUS degrades roughly linearly with rho (log scale, as the paper plots it)"
    if not tally.total:
        return (title, NA, f"needs a series with RUS at >= {MIN_RHOS} rho values", lines)
    return (title, tally.verdict(MOST),
            f"per seed, RUS's AUC against log10(rho) over >= {MIN_RHOS} rho values: a line's drop below 0 and a "
            f"quadratic's bend a tie with 0 (within ±{BEND_SHARE:.0%} of the drop), t-intervals over seeds: "
            f"{tally.text(MOST)}", lines)


def partial_levels(runs):
    title = "Full ROS is the best ROS level; an intermediate RUS level can beat full RUS"
    partial = {m for m in {r["method"] for r in runs} if needs_level(m)}
    part = [r for r in runs if r["method"] in partial and r["level"] is not None]
    if not part:
        return (title, NA, "no partial-sampling runs in this sweep", [])
    lines, tallies, cells = [], {"ros": Tally(), "rus": Tally()}, _cells(runs)
    for key in sorted({(r["dataset"], r["imbalance"], r["rho"], r["mu"]) for r in part},
                      key=lambda k: (k[0], k[1], _none_last(k[2]), _none_last(k[3]))):
        cell = cells.get(key, {})
        for pm in sorted({r["method"] for r in part if (r["dataset"], r["imbalance"], r["rho"], r["mu"]) == key}):
            kind = M.get(pm).phases[0].sampler.removeprefix("partial-")      # its full-sampling anchor, by its spec
            if kind not in tallies:
                continue
            full = cell.get(kind)
            levels: dict[float, list[dict]] = defaultdict(list)
            for r in part:
                if r["method"] == pm and (r["dataset"], r["imbalance"], r["rho"], r["mu"]) == key:
                    levels[r["level"]].append(r)
            diffs = {lv: paired(rs, full, AUC, names=(f"{pm} level {lv:g}", kind)) for lv, rs in sorted(levels.items())
                     } if full else {}
            lines.append(f"{pm} at {_cell_name(key)}: full {kind.upper()} {_fmt(full and _mean(full))}; "
                         + "; ".join(f"level {lv:g}: {_fmt(_mean(rs))}"
                                     + (f" (minus full: {diffs[lv].text()})" if full else "")
                                     for lv, rs in sorted(levels.items()))
                         + f"; none (baseline) {_fmt(_mean(cell.get('baseline', [])))}")
            if not diffs:
                continue
            outcomes = [d.outcome for d in diffs.values()]
            n = min(d.n for d in diffs.values())
            if kind == "ros":          # for: no level above full ROS; against: some level above it
                tallies[kind].add(False if ">" in outcomes else (True if all(c in ("<", "=") for c in outcomes)
                                                                 else None), n)
            else:                      # for: some level above full RUS; against: every level at or below it
                tallies[kind].add(True if ">" in outcomes else (False if all(c in ("<", "=") for c in outcomes)
                                                                else None), n)
    ros, rus = tallies["ros"], tallies["rus"]
    verdict = combine(ros.verdict(EVERY), rus.verdict(ANY)) if ros.total and rus.total else NA
    return (title, verdict, f"in every cell no partial ROS level's AUC above full ROS ({ros.text(EVERY)}), and in "
            f"some cell a partial RUS level's AUC above full RUS ({rus.text(ANY)}); each level against full sampling "
            "of the same cell, paired by seed", lines)


def thresholding(runs):
    raised, ros_best, lines = Tally(), Tally(), []
    for key, m in _cells(runs).items():
        m = _paper_methods(m)
        b = m.get("baseline")
        if not b:
            continue
        d = paired(b, b, ACCURACY_THRESHOLDED, ACCURACY, names=("thresholded", "argmax"))
        raised.add(_for(d.outcome, ">"), d.n)
        line = (f"{_cell_name(key)}: baseline accuracy {_fmt(_mean(b, ACCURACY))} -> "
                f"{_fmt(_mean(b, ACCURACY_THRESHOLDED))} thresholded (thresholded minus argmax, the same networks: "
                f"{d.text()})")
        if "ros" in m and len(m) > 1:
            ok, n, diffs = _wins_or_ties(m, "ros", ACCURACY_THRESHOLDED)
            ros_best.add(ok, n)
            if ok is not True:
                line += (f"; thresholded ROS {_fmt(_mean(m['ros'], ACCURACY_THRESHOLDED))} "
                         f"{'beaten by' if ok is False else 'undecided against'} "
                         + _diff_list(m, diffs, ACCURACY_THRESHOLDED))
        lines.append(line)
    verdict = combine(raised.verdict(MOST), ros_best.verdict(MOST)) if raised.total and ros_best.total else (
        raised.verdict(MOST) if raised.total else NA)
    return ("Thresholding raises accuracy, best together with ROS", verdict,
            f"thresholding raises the baseline's accuracy, paired network by network ({raised.text(MOST)}), and none of "
            f"the paper's other methods has a thresholded accuracy above ROS's, paired by seed ({ros_best.text(MOST)})",
            lines)


def reference_runs(runs):
    """The networks the reference error is read from: the balanced MNIST baselines."""
    return [r for r in _balanced(runs, "mnist") if r["level"] is None]


def reference_error(runs):
    title = "LeNet-5 on balanced MNIST: error < 1%"
    bal = [r for r in reference_runs(runs) if r.get(ACCURACY) is not None]
    if not bal:
        return (title, NA, "no balanced full-MNIST run in this sweep", [])
    errs = [100 - r[ACCURACY] for r in bal]
    k, e = len(errs), mean(errs)
    if k < 2:
        return (title, f"{UNDECIDABLE} at n = {k}", f"balanced baseline test error {e:.3f}% from {k} network: no "
                "spread between seeds, no interval", [])
    if any(r.get("test_examples") is None for r in bal):
        return (title, f"{UNDECIDABLE} (test-set size not recorded)",
                f"balanced baseline test error {e:.3f}% over {k} network(s); the size of the test set they were "
                "scored on is not recorded, so its sampling error cannot be included", [])
    binom = mean(ei * (100 - ei) / r["test_examples"] for ei, r in zip(errs, bal))     # percent^2
    n_test = sorted({int(r["test_examples"]) for r in bal})
    n_text = "/".join(f"{v:,}" for v in n_test)
    test_only = e + norm.ppf(CONFIDENCE) * math.sqrt(binom)
    between = stdev(errs) ** 2 / k
    se = math.sqrt(between + binom)
    df = (between + binom) ** 2 / (between ** 2 / (k - 1)) if between > 0 else math.inf
    t = float(student_t.ppf(CONFIDENCE, df)) if math.isfinite(df) else float(norm.ppf(CONFIDENCE))
    upper, lower = e + t * se, e - t * se
    if upper < REFERENCE_ERROR:
        verdict, where = SUPPORTED, f"the upper bound is below {REFERENCE_ERROR:g}%"
    elif lower >= REFERENCE_ERROR:
        verdict, where = NOT, f"the lower bound is at or above {REFERENCE_ERROR:g}%"
    elif test_only >= REFERENCE_ERROR:
        verdict = f"{UNDECIDABLE} with {n_text} test images"
        where = (f"the bounds hold {REFERENCE_ERROR:g}%, and the test set's sampling error alone reaches it "
                 f"(e + 1.645 x {math.sqrt(binom):.3f} = {test_only:.3f}%): more seeds cannot decide it")
    else:
        verdict, where = f"{UNDECIDABLE} at n = {k}", f"the bounds hold {REFERENCE_ERROR:g}%"
    return (title, verdict,
            f"balanced baseline test error {e:.3f}% over {k} networks, one-sided {CONFIDENCE:.0%} bounds "
            f"[{lower:.3f}, {upper:.3f}]% (se {se:.3f} = between seeds {math.sqrt(between):.3f} and the test set's "
            f"binomial error {math.sqrt(binom):.3f} on {n_text} images; t at {df:.1f} df): {where}", [])


CHECKS = (imbalance_hurts, task_difficulty, step_vs_linear, ros_wins_or_ties, two_phase_between,
          rus_linear_in_rho, partial_levels, thresholding, reference_error)


def findings(runs) -> list[tuple[str, str, str, list[str]]]:
    """Verdicts on per-network runs (`sweeps.report.load_runs`); each method of a cell at its best-AUC lr."""
    if runs and any("seed" not in r for r in runs):
        raise ValueError("findings need per-network runs (sweeps.report.load_runs) to pair methods by seed; got "
                         "rows without a seed (sweeps.report.aggregate's rows?)")
    runs = best_lr_runs(runs)
    return [check(runs) for check in CHECKS]


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
    from imbalance_core.specs import DATASETS
    from sweeps.grids import CIFAR10_MUS, CIFAR10_RHOS, MNIST_MUS, MNIST_RHOS

    paper = {"mnist": (MNIST_RHOS, MNIST_MUS, 50), "cifar10": (CIFAR10_RHOS, CIFAR10_MUS, 2),
             "imagenet": ((10, 50, 100), (0.1, 0.8, 0.9), 3)}
    out = []
    for ds in sorted({r["dataset"] for r in runs}):
        rs = [r for r in runs if r["dataset"] == ds]
        if ds not in paper:
            out.append(f"{ds}: not one of the paper's datasets (a stand-in for quick runs)")
        sched = DATASETS[ds].schedule if ds in DATASETS else None
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


def summary_table(results) -> str:
    """The verdicts as one markdown table (finding, verdict, the rule with its counts): findings.md's and the
    pages' READMEs' (`sweeps.publish.readme_blocks`)."""
    return "\n".join(["| finding | verdict | rule |", "|---|---|---|"] +
                     [f"| {f} | **{v}** | {rule} |" for f, v, rule, _ in results])


def write_markdown(results, sweep: str, path: Path, preamble: str = "", runs: list[dict] | None = None) -> None:
    out = [f"# The paper's findings, checked against sweep `{sweep}`", "", preamble, ""]
    if runs is not None:
        out += ["## How this run differs from the paper's protocol", ""] + [f"- {d}" for d in deviations(runs)] + [""]
    out += ["## How verdicts are decided", "", __doc__.split("The rules, stated once here and on every page:")[1]
            .split("Nothing is tuned")[0].strip(), "", summary_table(results)]
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
    unknown = fill_test_examples(a.tracking_uri, reference_runs(runs))     # from result.json where not a metric
    if unknown:
        print(f"findings: the test-set size of {unknown} balanced network(s) is not recorded", file=sys.stderr)
    res = findings(runs)
    out = Path(a.out or f"reports/{a.name}/findings.md")
    write_markdown(res, a.name, out, a.preamble, runs=runs)
    for f, v, rule, _ in res:
        print(f"{v:>24s}  {f}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
