"""The traversal readout plot: its step marker moves without redrawing the whole figure."""

from __future__ import annotations

import numpy as np

from cryospire_core.analysis.explorer import PartReadout
from cryospire_napari._readout_plot import ReadoutPlot


def _pixels(plot: ReadoutPlot) -> np.ndarray:
    return np.asarray(plot.canvas.buffer_rgba()).copy()


def test_marker_moves_by_blitting_not_by_redrawing(qtbot):
    plot = ReadoutPlot()
    qtbot.addWidget(plot.canvas)
    plot.canvas.resize(400, 180)
    plot.canvas.show()
    steps = [PartReadout(np.array([a, 2 * a]), np.full((2, 3), a), np.array([1.0, 0.5])) for a in range(10)]
    plot.plot(steps)
    draws = []
    plot.canvas.mpl_connect("draw_event", lambda _: draws.append(1))
    plot.canvas.draw()
    assert len(draws) == 1
    first = _pixels(plot)
    plot.mark(7)
    moved = _pixels(plot)
    assert len(draws) == 1  # no full redraw
    assert all(m.get_xdata()[0] == 7 for m in plot.markers)
    changed = np.argwhere(np.any(moved != first, axis=(0, 2)))[:, 0]  # columns that changed
    x7 = plot.axes[0].transData.transform((7, 0))[0]
    x0 = plot.axes[0].transData.transform((0, 0))[0]
    assert len(changed) and abs(changed - x7).min() < 3 and abs(changed - x0).min() < 3  # old mark gone, new one drawn
    plot.mark(2)
    plot.mark(7)
    np.testing.assert_array_equal(_pixels(plot), moved)  # the background is restored exactly
