"""sweeps.run_figures: the per-network PNGs, checked by their pixels through the layouts the functions return."""
import itertools

import numpy as np
import pytest
from PIL import Image

from sweeps.run_figures import ARGMAX_RGB, HEAT_MAX_PX, THRESHOLDED_RGB, confusion_png, recall_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def _corner(rgb, box, inset=2, size=4):
    """Mean RGB of a small patch inside a cell's top-left corner (away from the printed count)."""
    x0, y0, _, _ = box
    return rgb[y0 + inset:y0 + inset + size, x0 + inset:x0 + inset + size].reshape(-1, 3).mean(0)


def _cell(rgb, box):
    x0, y0, x1, y1 = box
    return rgb[y0:y1, x0:x1].reshape(-1, 3)


def _colour_count(rgb, x0, x1, colour):
    return int((rgb[:, x0:x1] == np.array(colour)).all(axis=2).sum())


@pytest.fixture
def ten_classes():
    cm = np.zeros((10, 10), dtype=int)
    cm[3, 7] = 500                       # one dominant cell in the argmax matrix
    cm[5, 5] = 40
    cm_t = np.zeros((10, 10), dtype=int)
    cm_t[8, 1] = 900                     # and another in the thresholded one
    return cm, cm_t


def test_confusion_png_is_a_legible_png_with_the_dominant_cell_darkest(tmp_path, ten_classes):
    cm, cm_t = ten_classes
    path = tmp_path / "confusion_matrix.png"
    lay = confusion_png(path, cm.tolist(), cm_t.tolist())
    blob = path.read_bytes()
    assert blob[:8] == PNG_SIGNATURE and len(blob) > 5000
    rgb = _rgb(path)
    assert (rgb.shape[1], rgb.shape[0]) == lay.size
    assert 800 <= lay.size[0] <= 1200 and 380 <= lay.size[1] <= 600 and lay.cell >= 24 and lay.block == 1
    # panels side by side, not overlapping
    assert lay.cell_box(0, 9, 9)[2] < lay.cell_box(1, 0, 0)[0]

    dark, zero = _corner(rgb, lay.cell_box(0, 3, 7)), _corner(rgb, lay.cell_box(0, 0, 0))
    assert dark.mean() < 100 and dark[2] > dark[0]          # dark blue
    assert zero.min() > 235                                 # (near) white
    mid = _corner(rgb, lay.cell_box(0, 5, 5))               # 40 of 500: light blue, between the two
    assert dark.mean() < mid.mean() < zero.mean()
    # each matrix has its own scale: the thresholded panel's dominant cell is dark, the argmax one's is white there
    assert _corner(rgb, lay.cell_box(1, 8, 1)).mean() < 100
    assert _corner(rgb, lay.cell_box(1, 3, 7)).min() > 235
    assert _corner(rgb, lay.cell_box(0, 8, 1)).min() > 235
    # counts printed: white text on the dark cell, black text on a light one, the cells of a row differ
    assert (_cell(rgb, lay.cell_box(0, 3, 7)).min(1) > 240).any()
    assert (_cell(rgb, lay.cell_box(0, 0, 0)).max(1) < 40).any()
    # axis labels/ticks left of and below the heat map (dark pixels in the margins)
    x0, y0 = lay.origins[0]
    assert (rgb[y0:y0 + lay.side, :x0 - 2].max(2) < 80).any()
    assert (rgb[y0 + lay.side + 2:, x0:x0 + lay.side].max(2) < 80).any()


def test_confusion_png_same_image_from_lists_and_arrays(tmp_path, ten_classes):
    cm, cm_t = ten_classes
    confusion_png(tmp_path / "a.png", cm, cm_t)
    confusion_png(tmp_path / "b.png", cm.tolist(), cm_t.tolist())
    assert np.array_equal(_rgb(tmp_path / "a.png"), _rgb(tmp_path / "b.png"))


def test_confusion_png_all_zero_and_float_matrices(tmp_path):
    lay = confusion_png(tmp_path / "z.png", [[0] * 4] * 4, [[0.5, 1.5, 0, 0]] * 4)
    rgb = _rgb(tmp_path / "z.png")
    assert all(_corner(rgb, lay.cell_box(0, i, j)).min() > 235 for i in range(4) for j in range(4))
    assert _corner(rgb, lay.cell_box(1, 2, 1)).mean() < _corner(rgb, lay.cell_box(1, 2, 0)).mean()


def test_confusion_png_1000_classes_is_bounded_and_shows_the_diagonal(tmp_path):
    C = 1000
    rng = np.random.default_rng(0)
    cm = (rng.random((C, C)) < 0.01).astype(int)
    cm[np.arange(C), np.arange(C)] = 40
    path = tmp_path / "big.png"
    lay = confusion_png(path, cm.tolist(), cm.T.tolist())
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    rgb = _rgb(path)
    assert (rgb.shape[1], rgb.shape[0]) == lay.size
    assert lay.n <= HEAT_MAX_PX and lay.cell >= 1 and lay.side <= HEAT_MAX_PX and lay.n * lay.block >= C
    assert lay.size[0] <= 1400 and lay.size[1] <= 700
    for panel in (0, 1):
        on = rgb[lay.cell_box(panel, 600, 600)[1], lay.cell_box(panel, 600, 600)[0]]
        off = rgb[lay.cell_box(panel, 600, 100)[1], lay.cell_box(panel, 600, 100)[0]]
        assert on.mean() < 100 and off.mean() > 200
    # the last class is drawn inside the heat map
    _, _, x1, y1 = lay.cell_box(0, C - 1, C - 1)
    assert x1 <= lay.origins[0][0] + lay.side and y1 <= lay.origins[0][1] + lay.side


def test_confusion_png_25_classes_unlabelled_cells_still_at_least_a_pixel(tmp_path):
    lay = confusion_png(tmp_path / "c.png", np.eye(25, dtype=int) * 7, np.eye(25, dtype=int))
    assert lay.block == 1 and lay.cell >= 1
    rgb = _rgb(tmp_path / "c.png")
    assert _rgb(tmp_path / "c.png")[lay.cell_box(0, 24, 24)[1], lay.cell_box(0, 24, 24)[0]].mean() < 100
    assert rgb[lay.cell_box(0, 24, 0)[1], lay.cell_box(0, 24, 0)[0]].min() > 235


def _bar_height(rgb, lay, cls, series):
    """Mean height in pixels of the series' colour in the bar's columns, within the plot (not the legend)."""
    x0, x1 = lay.bar_span(cls, series)
    colour = (ARGMAX_RGB, THRESHOLDED_RGB)[series]
    return _colour_count(rgb[lay.plot[1]:lay.plot[3] + 1], x0, x1, colour) / (x1 - x0)


def test_recall_png_bar_heights_follow_recall(tmp_path):
    recall = [100, 10, 50, 0, 75, 25, 60, 90, 30, 5]
    recall_t = [10, 100, 50, 80, 0, 25, 40, 20, 70, 95]
    path = tmp_path / "per_class_recall.png"
    lay = recall_png(path, recall, np.array(recall_t), class_counts=[5000, 50, 10, 1, 2, 3, 4, 5, 6, 7])
    blob = path.read_bytes()
    assert blob[:8] == PNG_SIGNATURE and len(blob) > 5000
    rgb = _rgb(path)
    assert (rgb.shape[1], rgb.shape[0]) == lay.size
    plot_px = lay.plot[3] - lay.plot[1]
    for c in range(10):
        for s, values in enumerate((recall, recall_t)):
            assert _bar_height(rgb, lay, c, s) == pytest.approx(plot_px * values[c] / 100, abs=2)
    assert _bar_height(rgb, lay, 0, 0) > _bar_height(rgb, lay, 1, 0) > 0
    assert _bar_height(rgb, lay, 1, 1) > _bar_height(rgb, lay, 0, 1) > 0
    # bars stand on the 0 % line and the 100 % bar reaches the top of the plot
    x0, _ = lay.bar_span(0, 0)
    column = (rgb[:, x0] == np.array(ARGMAX_RGB)).all(1)
    assert column[lay.y_of(100)] and column[lay.y_of(0) - 1] and not column[lay.y_of(0) + 1]
    # each series' colour only in its own bars (and its legend swatch above the plot)
    in_plot = rgb[lay.plot[1]:lay.plot[3] + 1]
    total = (in_plot == np.array(ARGMAX_RGB)).all(2).sum()
    assert total == sum(_colour_count(in_plot, *lay.bar_span(c, 0), ARGMAX_RGB) for c in range(10))
    above = rgb[:lay.plot[1] - 1]
    assert (above == np.array(ARGMAX_RGB)).all(2).sum() > 50 and (above == np.array(THRESHOLDED_RGB)).all(2).sum() > 50
    # training counts make room for a second label row under the class indices
    assert recall_png(tmp_path / "n.png", recall, recall_t).size[1] < lay.size[1]


def test_recall_png_clips_and_tolerates_nan(tmp_path):
    lay = recall_png(tmp_path / "r.png", [float("nan"), 150, -3], [50, 50, 50])
    rgb = _rgb(tmp_path / "r.png")
    assert _bar_height(rgb, lay, 0, 0) == 0
    assert _bar_height(rgb, lay, 1, 0) == pytest.approx(lay.plot[3] - lay.plot[1], abs=2)
    assert _bar_height(rgb, lay, 2, 0) == 0


def test_recall_png_1000_classes_bounded_thin_bars(tmp_path):
    C = 1000
    recall = np.where(np.arange(C) < 500, 90.0, 20.0)
    path = tmp_path / "big.png"
    lay = recall_png(path, recall, 100 - recall, class_counts=list(range(C)))
    rgb = _rgb(path)
    assert (rgb.shape[1], rgb.shape[0]) == lay.size
    assert lay.size[0] <= 2000 and lay.size[1] <= 450 and lay.bar >= 1
    assert lay.bar_span(C - 1, 1)[1] <= lay.plot[2]
    assert _bar_height(rgb, lay, 100, 0) > _bar_height(rgb, lay, 700, 0) > 0
    assert _bar_height(rgb, lay, 700, 1) > _bar_height(rgb, lay, 100, 1) > 0
    # the bars of different classes do not overlap
    spans = [lay.bar_span(c, s) for c in range(0, C, lay.block) for s in (0, 1)]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
