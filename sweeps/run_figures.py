"""The two per-network PNGs of a sweep run, drawn with Pillow (`network_figures`: `confusion_png` and
`recall_png`, confusion matrices and per-class recall).

The trial that trained the networks draws them into its final checkpoint (on the worker, in parallel:
`sweeps.trainable`); `sweeps.tracking` logs them with each network's MLflow run (and draws them there only for
a network whose checkpoint has none). The report's figures are `sweeps.figures` (matplotlib).

Why not matplotlib: a sweep draws two per network, and the matplotlib versions of these two figures cost
hours of CPU for a 22,500-network grid; these take a few milliseconds (benchmarks/grid_throughput.py;
docs/performance.md, "The training path").

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
