"""The latent explorer's part readouts: a table of each part's motion at the cursor, and a plot of
it along a traversal with a marker at the step shown."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QSize
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
)

from cryospire_core.analysis.explorer import PartReadout

from ._parts_widget import part_colours
from ._theme import PLOT_COLOURS


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
        return self.horizontalHeader().sizeHint().height() + n * rows + 2 * self.frameWidth()

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


class ReadoutPlot:
    """Angle (°), shift (Å) and presence of every part against the traversal step, one axes each
    (matplotlib); ``canvas`` is the Qt widget.

    The step marker moves by blitting: a full redraw of the figure costs 0.4-0.6 s on 2 busy
    cores and would stall the viewer at every step of a drag, Play or movie, so the markers are
    animated artists drawn over a cached copy of the rest (``_background``, taken after each
    full draw)."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=(4, 2.2), dpi=80, facecolor=PLOT_COLOURS["figure"])
        self.canvas = FigureCanvasQTAgg(self.fig)
        self.canvas.setMinimumHeight(150)
        self.axes = self.fig.subplots(1, 3)
        self.fig.subplots_adjust(left=0.1, right=0.98, bottom=0.2, top=0.85, wspace=0.45)
        for ax, title in zip(self.axes, ("angle (°)", "shift (Å)", "presence")):
            ax.set_title(title, color="w", fontsize=8)
            ax.set_facecolor(PLOT_COLOURS["axes"])
            ax.tick_params(colors="w", labelsize=7)
        self.markers: list = []
        self._background = None
        self.canvas.mpl_connect("draw_event", self._drawn)

    def plot(self, readouts: list[PartReadout]) -> None:
        """Plot the readouts of the steps of a traversal (none: empty axes)."""
        for ax in self.axes:
            for line in list(ax.lines):
                line.remove()
        self.markers = []
        if readouts:
            steps = np.arange(len(readouts))
            values = (np.stack([r.angle_deg for r in readouts]), np.stack([r.shift for r in readouts]),
                      np.stack([r.presence for r in readouts]))
            colours = part_colours(values[0].shape[1])
            for ax, v in zip(self.axes, values):
                for k in range(v.shape[1]):
                    ax.plot(steps, v[:, k], color=colours[k], lw=1.2)
                ax.relim()
                ax.autoscale_view()
                self.markers.append(ax.axvline(0, color="w", lw=0.8, ls=":", animated=True))
        self.canvas.draw_idle()

    def mark(self, step: int) -> None:
        """Move the marker to ``step``."""
        for m in self.markers:
            m.set_xdata([step, step])
        if self.markers and self._background is not None:
            self.canvas.restore_region(self._background)
            self._blit_markers()

    def _drawn(self, _event) -> None:
        """After a full draw (new plot, resize): keep it without the markers, then add them."""
        self._background = self.canvas.copy_from_bbox(self.fig.bbox)
        self._blit_markers()

    def _blit_markers(self) -> None:
        for ax, m in zip(self.axes, self.markers):
            ax.draw_artist(m)
        self.canvas.blit(self.fig.bbox)
