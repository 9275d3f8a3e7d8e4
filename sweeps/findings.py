"""Check the paper's findings (STUDY.md, "What the paper found") against a sweep's runs in MLflow.

    python sweeps/findings.py --tracking-uri URI --name SWEEP [--out docs/results/mnist/findings.md]

Each finding gets a verdict (supported / not supported / not checkable here) and the numbers that
decide it, computed from the per-cell means over repetitions (sweeps.report.aggregate). Two methods
"tie" when their mean AUCs differ by no more than the larger of their standard deviations over seeds.
Thresholds are stated next to each check; nothing is tuned to the paper's answer.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweeps.report import SweepNotFound, aggregate, load_runs

SUPPORTED, NOT, NA = "supported", "not supported", "not checkable here"


def _cells(rows):
    """{(imbalance, rho, mu): {method: row}} for the imbalanced cells (no partial levels)."""
    out = defaultdict(dict)
    for r in rows:
        if r["imbalance"] in ("step", "linear") and r["level"] is None:
            out[(r["imbalance"], r["rho"], r["mu"])][r["method"]] = r
    return out


def _tol(a, b) -> float:
    return max(a.get("auc_std") or 0.0, b.get("auc_std") or 0.0)


def _series(rows, method, imbalance, mu=None):
    pts = sorted(((r["rho"], r) for r in rows if r["method"] == method and r["imbalance"] == imbalance
                  and r["level"] is None and (mu is None or r["mu"] == mu)), key=lambda t: t[0])
    return pts


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def imbalance_hurts(rows):
    lines, ok = [], True
    bal = [r for r in rows if r["imbalance"] == "balanced" and r["method"] == "baseline"]
    ref = bal[0]["auc_mean"] if bal else None
    mus = sorted({r["mu"] for r in rows if r["imbalance"] == "step"})
    for imb, mu in [("step", m) for m in mus] + [("linear", None)]:
        s = _series(rows, "baseline", imb, mu)
        if len(s) < 2:
            continue
        aucs = [r["auc_mean"] for _, r in s]
        falls = aucs[-1] < aucs[0] and (ref is None or max(aucs) <= ref + 1e-9)
        ok &= falls
        lines.append(f"baseline {imb}{'' if mu is None else f' mu {mu:g}'}: AUC "
                     + ", ".join(f"rho {rho:g}: {_fmt(r['auc_mean'])}" for rho, r in s))
    if ref is not None:
        lines.insert(0, f"balanced baseline AUC {ref:.2f}")
    return ("Imbalance hurts, more as rho grows", SUPPORTED if ok and lines else NOT,
            "AUC at the largest rho below the smallest rho's, and no imbalanced cell above the balanced set, "
            "for every series", lines)


def task_difficulty(rows):
    return ("... and more as the task grows harder", NA,
            "needs CIFAR-10 and ImageNet runs beside MNIST", [])


def step_vs_linear(rows):
    lines, wins, total = [], 0, 0
    step = {rho: r for rho, r in _series(rows, "baseline", "step", 0.5)}
    for rho, lin in _series(rows, "baseline", "linear"):
        if rho in step:
            total += 1
            wins += step[rho]["auc_mean"] < lin["auc_mean"]
            lines.append(f"rho {rho:g}: step (mu .5) {_fmt(step[rho]['auc_mean'])} vs linear {_fmt(lin['auc_mean'])}")
    verdict = NA if not total else (SUPPORTED if wins >= math.ceil(0.75 * total) else NOT)
    return ("Step imbalance hurts more than linear at the same rho and amount of data", verdict,
            f"baseline AUC lower for step (mu 0.5, the same total examples as linear) in {wins}/{total} rho values "
            "(supported if >= 75%)", lines)


def ros_wins_or_ties(rows):
    cells, lines, good, total = _cells(rows), [], 0, 0
    for key, m in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        if "ros" not in m or len(m) < 2:
            continue
        total += 1
        best = max((r for k, r in m.items()), key=lambda r: r["auc_mean"])
        tie = best["auc_mean"] - m["ros"]["auc_mean"] <= _tol(best, m["ros"])
        good += tie
        if not tie:
            lines.append(f"{key[0]} rho {key[1]:g} mu {key[2]:g}: best {best['method']} {_fmt(best['auc_mean'])} "
                         f"vs ROS {_fmt(m['ros']['auc_mean'])}")
    verdict = NA if not total else (SUPPORTED if good >= math.ceil(0.8 * total) else NOT)
    return ("ROS wins or ties almost everywhere", verdict,
            f"ROS best or tied on AUC in {good}/{total} imbalanced cells (supported if >= 80%); cells where it "
            "lost are listed", lines)


def two_phase_between(rows):
    cells, lines, out = _cells(rows), [], []
    for base in ("ros", "rus"):
        good = total = 0
        for key, m in cells.items():
            tp = m.get(f"two-phase-{base}")
            if not tp or base not in m or "baseline" not in m:
                continue
            total += 1
            lo = min(m["baseline"]["auc_mean"], m[base]["auc_mean"]) - _tol(tp, m[base])
            hi = max(m["baseline"]["auc_mean"], m[base]["auc_mean"]) + _tol(tp, m[base])
            good += lo <= tp["auc_mean"] <= hi
        out.append((good, total))
        lines.append(f"two-phase {base.upper()} between baseline and {base.upper()} (within spread) in {good}/{total} cells")
    total = sum(t for _, t in out)
    good = sum(g for g, _ in out)
    verdict = NA if not total else (SUPPORTED if good >= math.ceil(0.75 * total) else NOT)
    return ("Two-phase lands between the baseline and its base method", verdict,
            "supported if >= 75% of cells", lines)


def rus_linear_in_rho(rows):
    lines, rs = [], []
    mus = sorted({r["mu"] for r in rows if r["imbalance"] == "step"})
    for imb, mu in [("step", m) for m in mus] + [("linear", None)]:
        s = _series(rows, "rus", imb, mu)
        if len(s) < 3:
            continue
        x = [math.log10(rho) for rho, _ in s]
        y = [r["auc_mean"] for _, r in s]
        mx, my = sum(x) / len(x), sum(y) / len(y)
        sxx = sum((a - mx) ** 2 for a in x)
        sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
        syy = sum((b - my) ** 2 for b in y)
        r = sxy / math.sqrt(sxx * syy) if sxx and syy else 0.0
        rs.append(r)
        lines.append(f"RUS {imb}{'' if mu is None else f' mu {mu:g}'}: slope {sxy / sxx:.2f} AUC points per decade "
                     f"of rho, Pearson r {r:.2f}")
    verdict = NA if not rs else (SUPPORTED if sum(r <= -0.9 for r in rs) >= math.ceil(0.75 * len(rs)) else NOT)
    return ("RUS degrades roughly linearly with rho (log scale, as the paper plots it)", verdict,
            "supported if AUC vs log10(rho) has r <= -0.9 in >= 75% of the series", lines)


def partial_levels(rows):
    part = [r for r in rows if r["method"] in ("partial-ros", "partial-rus")]
    if not part:
        return ("Full ROS is the best ROS level; an intermediate RUS level can beat full RUS", NA,
                "no partial-sampling runs in this sweep", [])
    rho, mu = part[0]["rho"], part[0]["mu"]
    part = [r for r in part if r["rho"] == rho and r["mu"] == mu]          # one cell: the first one
    cell = {r["method"]: r for r in rows if r["imbalance"] == "step" and r["rho"] == rho and r["mu"] == mu
            and r["level"] is None}
    lines, ok_ros, ok_rus = [], True, False
    for kind in ("ros", "rus"):
        full = cell.get(kind)
        levels = sorted(((r["level"], r) for r in part if r["method"] == f"partial-{kind}"), key=lambda t: t[0])
        lines.append(f"{kind.upper()} at rho {rho:g}: full {_fmt(full and full['auc_mean'])}; "
                     + ", ".join(f"level {lv:g}: {_fmt(r['auc_mean'])}" for lv, r in levels)
                     + f"; none (baseline) {_fmt(cell.get('baseline', {}).get('auc_mean'))}")
        if full is None:
            continue
        if kind == "ros":
            ok_ros = all(r["auc_mean"] <= full["auc_mean"] + _tol(r, full) for _, r in levels)
        else:
            ok_rus = any(r["auc_mean"] > full["auc_mean"] + _tol(r, full) for _, r in levels)
    verdict = SUPPORTED if ok_ros and ok_rus else NOT
    return ("Full ROS is the best ROS level; an intermediate RUS level can beat full RUS", verdict,
            f"full ROS best or tied: {ok_ros}; some partial RUS level above full RUS beyond the spread: {ok_rus}", lines)


def thresholding(rows):
    cells, raised, total, ros_best, lines = _cells(rows), 0, 0, 0, []
    for key, m in cells.items():
        b = m.get("baseline")
        if not b:
            continue
        total += 1
        raised += b["accuracy_thresholded_mean"] > b["accuracy_mean"]
        best = max(m.values(), key=lambda r: r["accuracy_thresholded_mean"])
        tol = max(best.get("accuracy_thresholded_std") or 0, (m.get("ros") or {}).get("accuracy_thresholded_std") or 0)
        ros_best += "ros" in m and best["accuracy_thresholded_mean"] - m["ros"]["accuracy_thresholded_mean"] <= tol
    lines.append(f"thresholding raised the baseline's accuracy in {raised}/{total} cells")
    lines.append(f"ROS + thresholding best or tied (within spread) on thresholded accuracy in {ros_best}/{total} cells")
    verdict = NA if not total else (SUPPORTED if raised >= math.ceil(0.8 * total) and ros_best >= math.ceil(0.5 * total)
                                    else NOT)
    return ("Thresholding raises accuracy, best together with ROS", verdict,
            "supported if it raises the baseline's accuracy in >= 80% of cells and ROS+thr is best or tied in "
            ">= 50%", lines)


def reference_error(rows):
    bal = [r for r in rows if r["imbalance"] == "balanced" and r["method"] == "baseline"]
    if not bal:
        return ("LeNet-5 on balanced MNIST: error < 1%", NA, "no balanced run in this sweep", [])
    err = 100 - bal[0]["accuracy_mean"]
    return ("LeNet-5 on balanced MNIST: error < 1%", SUPPORTED if err < 1 else NOT,
            f"balanced baseline test error {err:.2f}% (mean of {bal[0]['n']} runs) at this sweep's budget", [])


CHECKS = (imbalance_hurts, task_difficulty, step_vs_linear, ros_wins_or_ties, two_phase_between,
          rus_linear_in_rho, partial_levels, thresholding, reference_error)


def findings(rows) -> list[tuple[str, str, str, list[str]]]:
    return [check(rows) for check in CHECKS]


def write_markdown(results, sweep: str, path: Path, preamble: str = "") -> None:
    out = [f"# The paper's findings, checked against sweep `{sweep}`", "", preamble, "",
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
    ap.add_argument("--preamble", default="", help="text placed under the title (protocol differences)")
    a = ap.parse_args(argv)
    try:
        _, runs = load_runs(a.tracking_uri, a.name)
    except SweepNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = findings(aggregate(runs))
    out = Path(a.out or f"reports/{a.name}/findings.md")
    write_markdown(res, a.name, out, a.preamble)
    for f, v, rule, _ in res:
        print(f"{v:>20s}  {f}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
