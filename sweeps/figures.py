"""Every figure the project draws, in one place.

1. The two per-network PNGs of a sweep run (`network_figures`: `confusion_png` and `recall_png`,
   confusion matrices and per-class recall), drawn with Pillow. The trial that trained the networks
   draws them into its final checkpoint (on the worker, in parallel); `sweeps.tracking` logs them with
   each network's MLflow run (and draws them there only for a network whose checkpoint has none).
2. The report figures of a finished sweep (`REPORT_FIGURES`: AUC vs rho, mu x rho heat maps, accuracy
   vs rho, partial sampling), drawn with matplotlib from the aggregated rows of `sweeps.report`, and the methods
   ranked per cell (`fig_ranked`), drawn from `sweeps.report.ranked_cells`: per-network runs compared paired by
   seed.

matplotlib is imported on first use of a report figure only (the sweep driver, and the Ray workers that
import the driver's module, never need it).

Per-network PNGs, why not matplotlib: a sweep draws two per network, and the matplotlib
versions of these two figures cost ~1.1-1.2 s of CPU per network at 10 classes (~4 s at 1000 classes)
on a 2-core machine: hours of CPU for a 22,500-network grid. These take a few milliseconds.

How they stay cheap: every image is built as an 8-bit palette image (heat ramp + grey ramp + the two bar
colours), which PNG-encodes several times faster (and smaller) than RGB; text is rendered once per
(string, size, anchor) and then stamped from a cache; heat maps and bars are filled with numpy.
Axis text is antialiased (grey ramp); the counts printed on coloured heat-map cells are not.

`confusion_png` and `recall_png` return their layout (`ConfusionLayout`, `RecallLayout`), which says
where each cell or bar was drawn, so tests can check the drawing by its pixels.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from imbalance_core import methods as M

LABELLED_MAX = 20          # classes up to which indices, counts and training counts are written out
HEAT_PX = 320              # side of a labelled heat map (at least 24 px per cell)
HEAT_MAX_PX = 500          # most cells per side of a heat map; larger matrices are block-summed
PLOT_MAX_PX = 1700         # widest recall plot; with more than PLOT_MAX_PX / 3 classes they are block-averaged
PANEL_TITLES = ("argmax", "thresholded (score / prior)")
ARGMAX_RGB, THRESHOLDED_RGB = (31, 119, 180), (255, 127, 14)

# palette indices: 0..HEAT_LEVELS-1 white-to-blue ramp, then a black-to-white grey ramp, then bar colours
HEAT_LEVELS, GREY_LEVELS = 200, 40
_GREY0 = HEAT_LEVELS
ARGMAX, THRESHOLDED = _GREY0 + GREY_LEVELS, _GREY0 + GREY_LEVELS + 1
BLACK_I, WHITE_I = _GREY0, _GREY0 + GREY_LEVELS - 1
INK_GREY, INK_LIGHT = 90, 225       # ink levels (0 = black, 255 = white) of axes and gridlines

# matplotlib's "Blues" (ColorBrewer, 9 classes): white for 0, dark blue for the matrix's maximum
_BLUES = np.array([(247, 251, 255), (222, 235, 247), (198, 219, 239), (158, 202, 225), (107, 174, 214),
                   (66, 146, 198), (33, 113, 181), (8, 81, 156), (8, 48, 107)], dtype=float)


def _palette() -> list[int]:
    t = np.linspace(0, 1, HEAT_LEVELS)
    heat = np.stack([np.interp(t, np.linspace(0, 1, len(_BLUES)), _BLUES[:, k]) for k in range(3)], axis=1)
    grey = np.repeat(np.linspace(0, 255, GREY_LEVELS)[:, None], 3, axis=1)
    rows = np.concatenate([heat, grey, [ARGMAX_RGB, THRESHOLDED_RGB]]).round().astype(int)
    pal = rows.ravel().tolist()
    return pal + [255] * (768 - len(pal))


PALETTE = _palette()
_INK_TO_INDEX = (_GREY0 + np.rint(np.arange(256) / 255 * (GREY_LEVELS - 1))).astype(np.uint8)


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


@functools.lru_cache(maxsize=8192)
def _tile(text: str, size: int, anchor: str, mono: bool, vertical: bool) -> tuple[Image.Image, int, int]:
    """`text` rendered once: (mask, dx, dy), the mask's top-left corner being at anchor point + (dx, dy).

    mono: a 1-bit mask (for the palette image's coloured cells); otherwise an antialiased "L" mask.
    vertical: rotated to read bottom to top, centred on the anchor point.
    """
    font = _font(size)
    l, t, r, b = font.getbbox(text, anchor=anchor)
    w, h = max(r - l, 1), max(b - t, 1)
    mask = Image.new("1" if mono else "L", (w, h), 0)
    ImageDraw.Draw(mask).text((-l, -t), text, fill=1 if mono else 255, font=font, anchor=anchor)
    if vertical:
        mask = mask.rotate(90, expand=True)
        return mask, -(mask.width // 2), -(mask.height // 2)
    return mask, l, t


def _stamp(img: Image.Image, xy, text: str, size: int, fill: int, anchor: str = "la",
           vertical: bool = False) -> None:
    """Draw `text` at `xy` (Pillow anchor) in ink level or palette index `fill`, from the tile cache."""
    if not text:
        return
    mask, dx, dy = _tile(text, size, "mm" if vertical else anchor, img.mode == "P", vertical)
    x, y = round(xy[0]) + dx, round(xy[1]) + dy
    img.paste(fill, (x, y, x + mask.width, y + mask.height), mask)


def _to_palette(ink: Image.Image) -> np.ndarray:
    """The ink canvas ("L", 255 = white) as palette indices on the grey ramp."""
    return _INK_TO_INDEX[np.asarray(ink)]


def _save(index: np.ndarray | Image.Image, path) -> Image.Image:
    img = index if isinstance(index, Image.Image) else Image.fromarray(np.ascontiguousarray(index), "L")
    if img.mode != "P":
        img.putpalette(PALETTE)
    img.save(os.fspath(path), format="PNG", compress_level=6)
    return img


def _fmt(v) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() else f"{v:.3g}"


# --------------------------------------------------------------------------- confusion matrices

@dataclass(frozen=True)
class ConfusionLayout:
    """Where `confusion_png` drew its two heat maps.

    `origins[p]` is the top-left pixel of panel p's heat map (0 = argmax, 1 = thresholded); each shown
    cell is `cell` pixels square and holds the sum over `block` x `block` classes (`block` = 1 up to
    HEAT_MAX_PX classes); `n` cells per side.
    """
    size: tuple[int, int]
    origins: tuple[tuple[int, int], tuple[int, int]]
    cell: int
    block: int
    n: int
    classes: int

    @property
    def side(self) -> int:
        return self.n * self.cell

    def cell_box(self, panel: int, true: int, pred: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), x1/y1 exclusive: the cell showing true class `true` predicted as `pred`."""
        x, y = self.origins[panel]
        r, c = true // self.block, pred // self.block
        return x + c * self.cell, y + r * self.cell, x + (c + 1) * self.cell, y + (r + 1) * self.cell


def confusion_layout(classes: int) -> ConfusionLayout:
    C = max(int(classes), 1)
    if C <= LABELLED_MAX:
        block, n = 1, C
        cell = max(HEAT_PX // C, 24)
    else:
        block = math.ceil(C / HEAT_MAX_PX)
        n = math.ceil(C / block)
        cell = max(1, 400 // n)
    side = n * cell
    left, top, right, bottom = 78, 44, 30, 58          # "true" + indices, title, x indices + "predicted"
    panel_w = left + side + right
    return ConfusionLayout(size=(2 * panel_w, top + side + bottom), origins=((left, top), (panel_w + left, top)),
                           cell=cell, block=block, n=n, classes=int(classes))


def _matrix(m) -> np.ndarray:
    """A square count matrix as an array; nested lists of ints (what the trials return) take a fast path."""
    if isinstance(m, np.ndarray):
        a = m
    elif len(m) and all(type(v) is int for v in m[0]):
        a = np.fromiter(itertools.chain.from_iterable(m), dtype=np.int64, count=len(m) * len(m[0]))
    else:
        a = np.asarray(m, dtype=float)
    a = a.reshape(len(m), -1)
    if a.dtype.kind not in "iu":
        a = a.astype(float)
        if not np.isfinite(a).all():
            a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    return a


def _block_sum(m: np.ndarray, block: int, n: int) -> np.ndarray:
    """The (n, n) matrix of sums over block x block squares of `m` (zero-padded at the end)."""
    if block == 1:
        return m
    if m.shape != (n * block, n * block):
        padded = np.zeros((n * block, n * block), dtype=m.dtype)
        padded[:m.shape[0], :m.shape[1]] = m
        m = padded
    cols = sum(m[:, k::block] for k in range(block))       # strided adds: much faster than reshape + sum
    return sum(cols[k::block] for k in range(block))


def confusion_png(path, cm, cm_t) -> ConfusionLayout:
    """Two heat maps side by side, argmax and thresholded (rows = true class, columns = predicted).

    White-to-blue per matrix (darkest = that matrix's largest count); with <= 20 classes the class indices
    label the axes and each cell prints its count (white on dark cells, black on light ones). More classes:
    the heat map only, block-summed to at most HEAT_MAX_PX cells a side, each cell at least one pixel.
    """
    mats = [_matrix(m) for m in (cm, cm_t)]
    C = mats[0].shape[0]
    lay = confusion_layout(C)
    side, labelled = lay.side, C <= LABELLED_MAX
    ink = Image.new("L", lay.size, 255)
    draw = ImageDraw.Draw(ink)
    shown = [_block_sum(m, lay.block, lay.n) for m in mats]
    for p, title in enumerate(PANEL_TITLES):
        x0, y0 = lay.origins[p]
        draw.rectangle((x0 - 1, y0 - 1, x0 + side, y0 + side), outline=INK_GREY)
        heading = f"confusion matrix, {title}"
        if lay.block > 1:
            heading += f" ({lay.block}x{lay.block} classes per cell)"
        _stamp(ink, (x0 + side / 2, y0 - 12), heading, 15, 0, "ms")
        _stamp(ink, (x0 + side / 2, y0 + side + 46), "predicted", 13, 0, "ms")
        _stamp(ink, (x0 - 62, y0 + side / 2), "true", 13, 0, vertical=True)
        if labelled:
            for k in range(C):
                c = k * lay.cell + lay.cell / 2
                _stamp(ink, (x0 + c, y0 + side + 5), str(k), 12, 0, "mt")
                _stamp(ink, (x0 - 6, y0 + c), str(k), 12, 0, "rm")
        elif C:                                     # first and last class index at the ends of each axis
            _stamp(ink, (x0, y0 + side + 5), "0", 12, 0, "lt")
            _stamp(ink, (x0 + side, y0 + side + 5), str(C - 1), 12, 0, "rt")
            _stamp(ink, (x0 - 6, y0), "0", 12, 0, "rt")
            _stamp(ink, (x0 - 6, y0 + side), str(C - 1), 12, 0, "rb")

    index = _to_palette(ink)
    for p, m in enumerate(shown):
        top = float(m.max()) if m.size else 0.0
        level = (np.zeros(m.shape, dtype=np.uint8) if top <= 0 else
                 np.clip(np.rint(m / top * (HEAT_LEVELS - 1)), 0, HEAT_LEVELS - 1).astype(np.uint8))
        x0, y0 = lay.origins[p]
        index[y0:y0 + side, x0:x0 + side] = np.repeat(np.repeat(level, lay.cell, axis=0), lay.cell, axis=1)
    img = Image.fromarray(index, "L")
    img.putpalette(PALETTE)

    if labelled:
        for p, m in enumerate(shown):
            top = float(m.max())
            texts = [[_fmt(v) for v in row] for row in m]
            widest = max((len(t) for row in texts for t in row), default=1)
            size = 13
            while size > 7 and _font(size).getlength("8" * widest) > lay.cell - 3:
                size -= 1
            for i in range(C):
                for j in range(C):
                    x, y, _, _ = lay.cell_box(p, i, j)
                    _stamp(img, (x + lay.cell / 2, y + lay.cell / 2), texts[i][j], size,
                           WHITE_I if m[i, j] > top / 2 else BLACK_I, "mm")
    _save(img, path)
    return lay


# --------------------------------------------------------------------------- per-class recall

@dataclass(frozen=True)
class RecallLayout:
    """Where `recall_png` drew its bars.

    `plot` = (x0, y_top, x1, y_zero): y_top is the pixel row of 100 %, y_zero the row of 0 % (the bars end
    just above it). Group g of `block` consecutive classes (block = 1 up to PLOT_MAX_PX / 3 classes, else
    the bars show the group's mean) starts at x0 + g * group; its argmax bar is `bar` pixels wide from
    `pad` pixels in, the thresholded bar right after it.
    """
    size: tuple[int, int]
    plot: tuple[int, int, int, int]
    group: int
    bar: int
    pad: int
    block: int
    classes: int

    def bar_span(self, cls: int, series: int) -> tuple[int, int]:
        """(x0, x1), x1 exclusive: pixel columns of class `cls`'s bar, series 0 = argmax, 1 = thresholded."""
        x = self.plot[0] + (cls // self.block) * self.group + self.pad + series * self.bar
        return x, x + self.bar

    def y_of(self, percent: float) -> int:
        """Pixel row of `percent` on the y axis."""
        return round(self.plot[3] - (self.plot[3] - self.plot[1]) * percent / 100.0)


def recall_layout(classes: int, with_counts: bool = False) -> RecallLayout:
    C = max(int(classes), 1)
    block = 1
    if C <= LABELLED_MAX:
        groups = C
        group = min(max(48, 480 // C), 96)
        bar = group * 3 // 8
    else:
        if PLOT_MAX_PX // C < 3:                    # not even 1 px per bar plus a 1 px gap: average blocks
            block = math.ceil(3 * C / PLOT_MAX_PX)
        groups = math.ceil(C / block)
        group = min(PLOT_MAX_PX // groups, 24)
        bar = max(1, (group - 1) // 2) if group < 8 else group * 2 // 5
    pad = (group - 2 * bar) // 2
    left, top, right, plot_h = 70, 62, 20, 260
    bottom = 64 if with_counts else 44
    plot_w = max(groups * group, 480)
    return RecallLayout(size=(left + plot_w + right, top + plot_h + bottom),
                        plot=(left, top, left + plot_w, top + plot_h), group=group, bar=bar, pad=pad,
                        block=block, classes=int(classes))


def _block_mean(v: np.ndarray, block: int) -> np.ndarray:
    if block == 1:
        return v
    n = math.ceil(len(v) / block)
    sums, counts = np.zeros(n * block), np.zeros(n * block)
    sums[:len(v)], counts[:len(v)] = v, 1
    return sums.reshape(n, block).sum(1) / counts.reshape(n, block).sum(1)


def recall_png(path, recall, recall_t, class_counts=None) -> RecallLayout:
    """Per-class recall in percent, argmax and thresholded bars side by side, y axis 0-100.

    With <= 20 classes each class is labelled with its index and, given `class_counts`, its training count
    "(n)"; more classes get thin unlabelled bars, averaged over blocks of classes beyond PLOT_MAX_PX / 3.
    """
    series = [np.clip(np.nan_to_num(np.asarray(r, dtype=float)), 0, 100) for r in (recall, recall_t)]
    C = len(series[0])
    labelled = C <= LABELLED_MAX
    with_counts = labelled and class_counts is not None
    lay = recall_layout(C, with_counts)
    x0, y_top, x1, y_zero = lay.plot
    ink = Image.new("L", lay.size, 255)
    draw = ImageDraw.Draw(ink)

    for pct in (0, 25, 50, 75, 100):
        y = lay.y_of(pct)
        draw.line((x0, y, x1, y), fill=INK_LIGHT if pct else INK_GREY)
        draw.line((x0 - 5, y, x0, y), fill=INK_GREY)
        _stamp(ink, (x0 - 8, y), str(pct), 12, 0, "rm")
    draw.line((x0, y_top, x0, y_zero), fill=INK_GREY)
    title = "per-class recall on the balanced test set"
    if lay.block > 1:
        title += f" (bars: mean over {lay.block} classes)"
    _stamp(ink, ((x0 + x1) / 2, 24), title, 15, 0, "ms")
    _stamp(ink, (18, (y_top + y_zero) / 2), "recall (%)", 13, 0, vertical=True)
    legend, lx = [], x1 - 230                       # legend above the plot's top right corner
    for name, colour in (("argmax", ARGMAX), ("thresholded", THRESHOLDED)):
        legend.append((lx, colour))
        _stamp(ink, (lx + 19, 45), name, 13, 0, "lm")
        lx += 19 + math.ceil(_font(13).getlength(name)) + 22
    if labelled:
        for c in range(C):
            cx = x0 + c * lay.group + lay.group / 2
            _stamp(ink, (cx, y_zero + 5), str(c), 12, 0, "mt")
            if with_counts:
                _stamp(ink, (cx, y_zero + 21), f"({_fmt(class_counts[c])})", 11, INK_GREY, "mt")
    elif C:
        _stamp(ink, (x0, y_zero + 5), "0", 12, 0, "lt")
        _stamp(ink, (x0 + math.ceil(C / lay.block) * lay.group, y_zero + 5), str(C - 1), 12, 0, "rt")
    _stamp(ink, ((x0 + x1) / 2, lay.size[1] - 8), "class (training examples)" if with_counts else "class",
           13, 0, "ms")

    index = _to_palette(ink)
    for lx, colour in legend:
        index[38:52, lx:lx + 14] = colour
    for s, (values, colour) in enumerate(zip(series, (ARGMAX, THRESHOLDED))):
        for g, v in enumerate(_block_mean(values, lay.block)):
            bx0, bx1 = lay.bar_span(g * lay.block, s)
            index[lay.y_of(v):y_zero, bx0:bx1] = colour
    _save(index, path)
    return lay


# The two PNGs of one network's MLflow run, by artifact name.
NETWORK_FIGURES = ("confusion_matrix.png", "per_class_recall.png")


def network_figures(folder, result) -> dict[str, Path]:
    """Draw the two PNGs of one network (a result dict or NetworkResult) into `folder` (made if missing):
    {name: path}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    confusion, recall = (folder / n for n in NETWORK_FIGURES)
    confusion_png(confusion, result["confusion_matrix"], result["confusion_matrix_thresholded"])
    recall_png(recall, result["recall"], result["recall_thresholded"], result.get("class_counts"))
    return dict(zip(NETWORK_FIGURES, (confusion, recall)))


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
