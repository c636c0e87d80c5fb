"""The traversal readout plot: drawn in a worker thread, its step marker painted over the image."""

from __future__ import annotations

import threading

import numpy as np

from cryospire_core.analysis.explorer import PartReadout
from cryospire_napari import _readout_plot
from cryospire_napari._readout_plot import ReadoutPlot


def _pixels(plot: ReadoutPlot) -> np.ndarray:
    image = plot.grab().toImage()
    w, h = image.width(), image.height()
    return np.frombuffer(image.constBits().asstring(image.sizeInBytes()), np.uint8).reshape(h, image.bytesPerLine())[:, :4 * w]


def test_the_plot_is_drawn_off_the_gui_thread_and_the_marker_painted_over_it(qtbot, monkeypatch):
    threads = []
    draw = _readout_plot.draw_readouts

    def recorded(*args):
        threads.append(threading.current_thread())
        return draw(*args)

    monkeypatch.setattr(_readout_plot, "draw_readouts", recorded)
    plot = ReadoutPlot()
    qtbot.addWidget(plot)
    plot.resize(420, 180)
    plot.show()
    steps = [PartReadout(np.array([a, 2.0 * a]), np.full((2, 3), float(a)), np.array([1.0, 0.5])) for a in range(10)]
    plot.plot(steps)
    qtbot.waitUntil(lambda: plot.image is not None and not plot.busy and plot.image.size == (plot.width(), plot.height()),
                    timeout=20_000)
    assert threads and all(t is not threading.main_thread() for t in threads)
    assert plot.image.rgba.shape == (180, 420, 4)
    first = _pixels(plot)
    drawn = len(threads)
    plot.mark(7)
    moved = _pixels(plot)
    assert len(threads) == drawn  # moving the marker draws nothing new
    changed = np.flatnonzero(np.any(moved != first, axis=0).reshape(-1, 4).any(1))  # columns that changed
    x0, x1 = plot.image.axes[0][:2]
    for step in (0, 7):
        assert np.abs(changed - (x0 + step * (x1 - x0) / 9)).min() < 3  # the old mark gone, the new one painted
    plot.mark(0)
    np.testing.assert_array_equal(_pixels(plot), first)
