"""The report figures of a finished sweep, drawn with matplotlib.

`REPORT_FIGURES` (AUC vs rho, mu x rho heat maps, accuracy vs rho, partial sampling) are drawn from the
aggregated rows of `sweeps.report`, and the methods ranked per cell (`fig_ranked`) from
`sweeps.report.ranked_cells`: per-network runs compared paired by seed. The per-network PNGs of each MLflow run
are `sweeps.run_figures` (Pillow).

matplotlib is imported on first use of a report figure only (the sweep driver, and the Ray workers that
import the driver's module, never need it).
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

from imbalance_core import methods as M

# --------------------------------------------------------------------------- report figures (matplotlib)

@functools.cache
def _pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def __getattr__(name: str):
    if name == "plt":                               # `figures.plt`: pyplot, imported on first use
        return _pyplot()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_partial(method: str) -> bool:
    """A method swept over levels (partial sampling: its spec's `needs_level`): drawn against level, not rho.
    An unknown method is a whole one."""
    try:
        return M.get(method).needs_level
    except ValueError:
        return False


def method_label(method: str) -> str:
    """The legend of a method: its spec's label (with its overrides), or the name of an unknown method."""
    try:
        return M.get(method).display
    except ValueError:
        return method


def method_rank(method: str) -> tuple:
    """The method registry's order (imbalance_core/methods.py), read at call time; unknown methods last
    (the order of the report's table rows and of the figures' legends)."""
    order = list(M.SPECS)
    base = method.split(":", 1)[0]
    return (order.index(base) if base in order else len(order), method)


def fmt_num(v) -> str:
    return "" if v is None else f"{v:g}"


def _colors(methods) -> dict[str, tuple]:
    cmap = _pyplot().get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(sorted(methods, key=method_rank))}


def _panels(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """(title, rows) per imbalance type, split per mu when there are several (step)."""
    panels = []
    for imb in sorted({r["imbalance"] for r in rows}):
        sub = [r for r in rows if r["imbalance"] == imb]
        mus = sorted({r["mu"] for r in sub}, key=lambda v: (v is None, v or 0))
        if len(mus) > 1:                            # step: one panel per mu
            for mu in mus:
                panels.append((f"{imb}, mu={fmt_num(mu)}", [r for r in sub if r["mu"] == mu]))
        else:
            panels.append((imb, sub))
    return panels


def _grid(n: int, w: float = 4.2, h: float = 3.4):
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = _pyplot().subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False,
                                   layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _n_rho(panel_rows: list[dict]) -> int:
    return len({r["rho"] for r in panel_rows if r["rho"] is not None})


def _lines_vs_rho(ax, panel_rows, colors, metric: str, style: str = "-", band: bool = True,
                  label_suffix: str = "") -> None:
    for method in sorted({r["method"] for r in panel_rows}, key=method_rank):
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
        _lines_vs_rho(ax, pr, colors, "auc")
        ax.set_title(f"{dataset}: {title}")
        ax.set_ylabel("ROC AUC (x100)")
    axes[0].legend(fontsize=7)
    fig.suptitle("AUC vs rho (mean; band = min-max over repetitions)", fontsize=9)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
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
        _lines_vs_rho(ax, pr, colors, "accuracy", "-", band=False)
        _lines_vs_rho(ax, pr, colors, "accuracy_thresholded", "--", band=False, label_suffix=" +thr")
        ax.set_title(f"{dataset}: {title}")
        ax.set_ylabel("accuracy (%)")
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle("Accuracy vs rho: solid = argmax, dashed = with thresholding (mean over repetitions)",
                 fontsize=9)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return out


def fig_heatmaps(dataset: str, rows: list[dict], out: Path) -> Path | str:
    step = [r for r in rows if r["imbalance"] == "step" and not is_partial(r["method"])
            and r["auc_mean"] is not None and r["rho"] is not None and r["mu"] is not None]
    methods = [m for m in sorted({r["method"] for r in step}, key=method_rank)
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
        ax.set_xticks(range(len(rhos)), [fmt_num(v) for v in rhos], fontsize=7, rotation=45)
        ax.set_yticks(range(len(mus)), [fmt_num(v) for v in mus], fontsize=7)
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
    _pyplot().close(fig)
    return out


def fig_partial(dataset: str, rows: list[dict], out: Path) -> Path | str:
    partial = [r for r in rows if is_partial(r["method"]) and r["level"] is not None and r["auc_mean"] is not None]
    if not partial:
        return "no partial-ros / partial-rus runs"
    cells = sorted({(r["imbalance"], r["rho"], r["mu"]) for r in partial},
                   key=lambda c: (c[0], c[1] or 0, c[2] or 0))
    partial_methods = sorted({r["method"] for r in partial}, key=method_rank)
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
        ax.set_title(f"{dataset}: {imb}, rho={fmt_num(rho)}, mu={fmt_num(mu)}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Partial sampling\n(level = rho: baseline; level = 1: full ROS / RUS)", fontsize=9)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return out


RANKED_METRICS = (("auc", "ROC AUC"), ("accuracy", "accuracy"), ("accuracy_posthoc_best", "best post-hoc accuracy"))
RANKED_MAX_CELLS = 4
OUTCOME_MARKER = {"=": "D", "<": "o", ">": "^", "?": "o"}      # a paired difference from the best: tie, below, ...


def fig_ranked(dataset: str, cells: list, out: Path) -> Path | str:
    """The ranked cells of `sweeps.report.ranked_cells` (one dataset), one row of panels per cell, two panels per
    metric: (1) each method's mean with the 95% interval of its mean, never drawn past 100 (the bar is clipped at
    the metric's bound); (2) its difference from the best method of the cell, paired by seed, with the 95%
    interval of the mean per-seed difference, the tie band shaded. Markers: filled = below the best, diamond =
    tie, hollow = not resolved."""
    if not cells:
        return "needs a cell with >= 3 whole (non-partial) methods"
    if len(cells) > RANKED_MAX_CELLS:
        return f"{len(cells)} cells with >= 3 methods (drawn for at most {RANKED_MAX_CELLS}); see ranked.md"
    plt = _pyplot()
    colors = _colors({e.method for c in cells for e in c.methods})
    n_methods = max(len(c.methods) for c in cells)
    fig, axes = plt.subplots(len(cells), 2 * len(RANKED_METRICS), squeeze=False,
                             figsize=(3.1 * 2 * len(RANKED_METRICS), 1.0 + 0.34 * n_methods * len(cells)))
    for row_axes, cell in zip(axes, cells):
        y = list(range(len(cell.methods)))[::-1]                 # the best mean AUC at the top
        labels = [f"{method_label(e.method)} (n={e.n})" for e in cell.methods]
        for k, (metric, label) in enumerate(RANKED_METRICS):
            ax_v, ax_d = row_axes[2 * k], row_axes[2 * k + 1]
            best = cell.best[metric]
            for yi, e in zip(y, cell.methods):
                m = e.mean[metric]
                if m is None:
                    continue
                iv = e.drawn(metric)                            # clipped at 100
                ax_v.errorbar([m], [yi], xerr=None if iv is None else [[m - iv[0]], [iv[1] - m]], fmt="o", ms=4,
                              capsize=2, color=colors[e.method])
                d = e.vs_best[metric]
                if e is best:
                    ax_d.plot([0], [yi], "*", ms=8, color=colors[e.method])
                elif d is not None and d.estimate is not None:
                    marker, filled = OUTCOME_MARKER[d.outcome], d.outcome != "?"       # hollow: not resolved
                    err = None if d.ci is None else [[d.estimate - d.ci[0]], [d.ci[1] - d.estimate]]
                    ax_d.errorbar([d.estimate], [yi], xerr=err, fmt=marker, ms=4, capsize=2, color=colors[e.method],
                                  mfc=colors[e.method] if filled else "white")
                    ax_d.axvspan(-d.margin, d.margin, ymin=(yi + 0.1) / len(y), ymax=(yi + 0.9) / len(y),
                                 color="0.88", lw=0, zorder=0)
            ax_v.set_yticks(y, labels, fontsize=7)
            ax_d.set_yticks(y, [""] * len(y))
            ax_v.set_xlabel(f"{label} (x100): mean, 95% CI", fontsize=7)
            ax_d.set_xlabel(f"minus best ({method_label(best.method) if best else '-'}), paired by seed", fontsize=7)
            ax_d.axvline(0, color="0.5", lw=0.8)
            for ax in (ax_v, ax_d):
                ax.set_ylim(-0.6, len(y) - 0.4)
                ax.tick_params(axis="x", labelsize=7)
                ax.grid(True, axis="x", alpha=0.3)
            lo, hi = ax_v.get_xlim()
            if hi > 100:                                        # the axis itself stops at the bound
                ax_v.set_xlim(lo, 100 + 0.02 * (100 - lo))
        row_axes[0].set_title(f"{cell.dataset}: {cell.imbalance}, rho={fmt_num(cell.rho)}, mu={fmt_num(cell.mu)}",
                              fontsize=9, loc="left")
    fig.suptitle("Methods ranked by mean AUC. Left of each pair: mean and 95% interval of the mean (clipped at 100). "
                 "Right: difference from the best, paired by seed, 95% interval;\ngrey = tie band; diamond = tie, "
                 "filled = below the best, hollow = not resolved", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


# (name, function(dataset, best-lr aggregated rows, out)); the ranked figure draws report.ranked_cells instead
REPORT_FIGURES = (("auc_vs_rho", fig_auc_vs_rho), ("heatmap_auc", fig_heatmaps),
                  ("accuracy_vs_rho", fig_accuracy_vs_rho), ("partial_sampling", fig_partial))
