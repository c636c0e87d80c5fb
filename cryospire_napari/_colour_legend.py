"""The key under the explorer's scatter: a legend (a swatch, name and particle count per category)
for a categorical colouring, a colour bar (the colormap, its end values, the quantity and its
unit) for a continuous one. Qt widgets in a strip of their own, so the key never covers a point;
what it says is a :class:`~cryospire_core.analysis.colourkey.ColourKey`, the same one the
points were coloured with (:func:`._scatter.point_colours`)."""

from __future__ import annotations

import html

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QLinearGradient, QPainter
from qtpy.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from cryospire_core.analysis.colourkey import ColourKey

from ._parts_widget import part_colours
from ._scatter import colormap_rgba
from ._theme import PLOT_COLOURS

#: Colour stops of the bar's gradient (the colormap is smooth between them).
BAR_STOPS = 32


def _hex(rgba) -> str:
    return QColor.fromRgbF(*[float(c) for c in rgba[:3]]).name()


class ColourBar(QWidget):
    """A horizontal strip of the scatter's colormap, low values at the left."""

    def __init__(self) -> None:
        super().__init__()
        self.setFixedHeight(10)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self._stops = colormap_rgba(np.linspace(0, 1, BAR_STOPS))

    def paintEvent(self, event) -> None:
        gradient = QLinearGradient(0, 0, self.width(), 0)
        for t, rgba in zip(np.linspace(0, 1, BAR_STOPS), self._stops):
            gradient.setColorAt(float(t), QColor.fromRgbF(*[float(c) for c in rgba]))
        painter = QPainter(self)
        painter.fillRect(self.rect(), gradient)
        painter.end()


class ColourLegend(QWidget):
    """The key of the scatter's current colouring (:meth:`show_key`); ``key`` is what it shows
    (None: nothing yet). Categorical: ``entries`` lists the categories as a wrapped line of
    swatches; continuous: ``bar`` with ``lo_label`` and ``hi_label`` at its ends, ``title``
    naming the quantity under it."""

    def __init__(self) -> None:
        super().__init__()
        self.key: ColourKey | None = None
        self.setAutoFillBackground(True)
        palette = self.palette()
        palette.setColor(self.backgroundRole(), QColor(PLOT_COLOURS["figure"]))
        self.setPalette(palette)
        text, muted = PLOT_COLOURS["text"], PLOT_COLOURS["muted"]
        self.entries = QLabel()
        self.entries.setWordWrap(True)
        # Its height is set from its width here (_fit_entries), not by height-for-width: that
        # would make the dock's scroll area lay everything out at its preferred height, not its
        # least, and scroll in a dock that has room for all of it.
        policy = self.entries.sizePolicy()
        policy.setHeightForWidth(False)
        self.entries.setSizePolicy(policy)
        self.entries.setTextFormat(Qt.RichText)
        self.entries.setStyleSheet(f"color: {text}; background: transparent;")
        self.bar = ColourBar()
        self.lo_label, self.title, self.hi_label = QLabel(), QLabel(), QLabel()
        self.title.setAlignment(Qt.AlignCenter)
        self.hi_label.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        for label, colour in ((self.lo_label, text), (self.title, muted), (self.hi_label, text)):
            label.setStyleSheet(f"color: {colour}; background: transparent;")
        ticks = QHBoxLayout()
        ticks.setContentsMargins(0, 0, 0, 0)
        ticks.addWidget(self.lo_label)
        ticks.addWidget(self.title, 1)
        ticks.addWidget(self.hi_label)
        self._bar_box = QWidget()
        bar_layout = QVBoxLayout(self._bar_box)
        bar_layout.setContentsMargins(0, 0, 0, 0)
        bar_layout.setSpacing(1)
        bar_layout.addWidget(self.bar)
        bar_layout.addLayout(ticks)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 3, 6, 3)
        layout.addWidget(self.entries)
        layout.addWidget(self._bar_box)
        self.show_key(None)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_entries()

    def _fit_entries(self) -> None:
        """Give the wrapped legend the height of its lines at the strip's width."""
        margins = self.layout().contentsMargins()
        width = max(1, self.width() - margins.left() - margins.right())
        height = self.entries.heightForWidth(width)
        if height >= 0:  # -1 while it has no text
            self.entries.setFixedHeight(height)

    def show_key(self, key: ColourKey | None) -> None:
        """Show ``key`` (None: hide the strip: nothing is coloured yet)."""
        self.key = key
        self.setVisible(key is not None)
        if key is None:
            return
        self.entries.setVisible(key.categorical)
        self._bar_box.setVisible(not key.categorical)
        if key.categorical:
            colours = part_colours(len(key.categories))
            # Non-breaking spaces inside an entry: lines wrap between entries only.
            items = [f'<span style="color:{_hex(colours[c.value])}">&#9632;</span>&nbsp;{html.escape(c.name)}'
                     f'&nbsp;<span style="color:{PLOT_COLOURS["muted"]}">{c.count}</span>' for c in key.categories]
            self.entries.setText(f'<span style="color:{PLOT_COLOURS["muted"]}">{html.escape(key.title)} '
                                 f"(particles):</span> " + " &nbsp; ".join(items))
            self._fit_entries()
        else:
            self.lo_label.setText(key.lo_text)
            self.hi_label.setText(key.hi_text)
            self.title.setText(key.title)
