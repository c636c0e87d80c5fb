"""The latent explorer's part readouts: a table of each part's motion at the cursor, and a plot of
it along a traversal with a marker at the step shown."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import QPointF, QSize, Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from cryospire_core.analysis.explorer import PartReadout

from ._parts_widget import part_colours
from ._theme import PLOT_COLOURS
from ._workers import LatestJob


class ReadoutTable(QTableWidget):
    """One row per part: its colour and number, angle (°), shift (Å) and presence. Its least
    height shows the header and up to :attr:`ROWS_SHOWN` rows whole, and it scrolls beyond; the
    dock puts it in a splitter, so the user can give it more."""

    ROWS_SHOWN = 6

    def __init__(self) -> None:
        super().__init__(0, 4)
        self.setHorizontalHeaderLabels(["part", "angle (°)", "shift (Å)", "presence"])
        self.verticalHeader().setVisible(False)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)  # four short columns: no sideways scrolling
        self.setVerticalScrollMode(QAbstractItemView.ScrollPerPixel)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)

    def rows_height(self, n: int) -> int:
        """Pixels that show the header and ``n`` rows whole. From the header's size hint, not its
        height: before the dock is shown (and styled by napari's theme) the height is stale."""
        rows = self.verticalHeader().defaultSectionSize()
        # + 1: a pixel of slack. Under PyQt6, with the docks stacked, the viewport came out one
        # pixel short of the last row's bottom line (tests/napari/test_explorer_legend.py).
        return self.horizontalHeader().sizeHint().height() + n * rows + 2 * self.frameWidth() + 1

    def minimumSizeHint(self) -> QSize:
        # Asked by the layout each time it lays the dock out, so it follows the theme's fonts.
        return QSize(super().minimumSizeHint().width(), self.rows_height(min(self.rowCount(), self.ROWS_SHOWN)))

    def show_readout(self, r: PartReadout) -> bool:
        """Fill the table with ``r``; True when its number of rows changed (and so its height)."""
        from qtpy.QtCore import Qt
        from qtpy.QtGui import QColor

        rows = r.rows()
        colours = part_colours(len(rows))
        resized = self.rowCount() != len(rows)
        if resized:
            self.setRowCount(len(rows))
            self.updateGeometry()  # a new minimumSizeHint
        for i, (k, angle, shift, presence) in enumerate(rows):
            name = QTableWidgetItem(f"part {k}")
            name.setData(Qt.DecorationRole, QColor.fromRgbF(*colours[i]))
            for col, item in enumerate((name, QTableWidgetItem(f"{angle:.1f}"), QTableWidgetItem(f"{shift:.1f}"),
                                        QTableWidgetItem(f"{presence:.2f}"))):
                self.setItem(i, col, item)
        return resized


@dataclass(frozen=True)
class PlotImage:
    """The readout plot drawn for a widget of ``size`` (w, h) pixels: ``rgba`` (h, w, 4) uint8
    and, per axes, where step 0 and the last step fall (x0, x1 pixels from the left; one step:
    x0 = x1) and its top and bottom (y0, y1 pixels from the top), for the step marker."""

    size: tuple[int, int]
    rgba: np.ndarray
    axes: tuple[tuple[float, float, float, float], ...]


def draw_readouts(readouts: list[PartReadout], size: tuple[int, int], dpi: float = 80.0) -> PlotImage:
    """Angle (°), shift (Å) and presence of every part against the traversal step (none: empty
    axes), one axes each, drawn by matplotlib's Agg into an image of ``size`` (w, h) pixels. A
    figure of its own, touched by one thread: safe in a worker."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    w, h = max(size[0], 1), max(size[1], 1)
    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi, facecolor=PLOT_COLOURS["figure"])
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.2, top=0.85, wspace=0.45)
    for ax, title in zip(axes, ("angle (°)", "shift (Å)", "presence")):
        ax.set_title(title, color="w", fontsize=8)
        ax.set_facecolor(PLOT_COLOURS["axes"])
        ax.tick_params(colors="w", labelsize=7)
    n = len(readouts)
    if readouts:
        steps = np.arange(n)
        values = (np.stack([r.angle_deg for r in readouts]), np.stack([r.shift for r in readouts]),
                  np.stack([r.presence for r in readouts]))
        colours = part_colours(values[0].shape[1])
        for ax, v in zip(axes, values):
            for k in range(v.shape[1]):
                ax.plot(steps, v[:, k], color=colours[k], lw=1.2)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba()).copy()
    spans = []
    for ax in axes:
        (x0, _), (x1, _) = ax.transData.transform([(0, 0), (max(n - 1, 0), 0)])
        box = ax.get_window_extent()
        spans.append((float(x0), float(x1), float(h - box.y1), float(h - box.y0)))  # Qt's y runs down
    return PlotImage((w, h), rgba, tuple(spans))


class ReadoutPlot(QWidget):
    """The readouts along a traversal (:func:`draw_readouts`) with a dotted marker at the step
    shown (:meth:`mark`).

    A full matplotlib draw of the three axes takes ~0.3 s on 2 cores, which froze the viewer
    each time a traversal was computed, so the plot is drawn in a worker thread (again when the
    widget's size changes) and shown as an image; the marker is a line Qt paints over it, so
    moving it during a drag, Play or a movie costs one small repaint."""

    def __init__(self) -> None:
        super().__init__()
        self.setMinimumHeight(150)
        self.readouts: list[PartReadout] = []
        self.step = 0
        self.image: PlotImage | None = None
        self._job = LatestJob()

    def plot(self, readouts: list[PartReadout]) -> None:
        """Plot the readouts of the steps of a traversal (none: empty axes), in the background."""
        self.readouts = list(readouts)
        self.step = 0
        self._draw()

    def mark(self, step: int) -> None:
        """Move the marker to ``step``."""
        self.step = step
        self.update()

    def shutdown(self) -> None:
        """Drop a drawing in progress (the dock is closing)."""
        self._job.cancel()

    @property
    def busy(self) -> bool:
        return self._job.busy

    def _draw(self) -> None:
        readouts, size = self.readouts, (self.width(), self.height())
        self._job.submit(lambda: (readouts, draw_readouts(readouts, size)), self._drawn, "drawing the readout plot")

    def _drawn(self, result: tuple[list[PartReadout], PlotImage]) -> None:
        readouts, image = result
        if readouts is self.readouts:  # not replaced meanwhile
            self.image = image
            self.update()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._draw()

    def paintEvent(self, event) -> None:
        from qtpy.QtGui import QColor, QImage, QPainter, QPen

        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(PLOT_COLOURS["figure"]))
        image = self.image
        if image is None:
            return
        w, h = image.size
        qimage = QImage(image.rgba.data, w, h, 4 * w, QImage.Format_RGBA8888)
        painter.drawImage(self.rect(), qimage)  # stretched until the redraw at the new size lands
        if len(self.readouts) < 2:
            return
        sx, sy = self.width() / w, self.height() / h
        pen = QPen(QColor("white"))
        pen.setStyle(Qt.DotLine)
        painter.setPen(pen)
        t = self.step / (len(self.readouts) - 1)
        for x0, x1, y0, y1 in image.axes:
            x = (x0 + t * (x1 - x0)) * sx
            painter.drawLine(QPointF(x, y0 * sy), QPointF(x, y1 * sy))
