"""The latent explorer's readouts in a real viewer: a legend or colour bar for every colouring of
the scatter (and for its density view), kept with the points' colours as the colouring changes and
as a run loads; and the dock fitting the open command's 1500x950 window with the Parts dock
beside it, the part table showing all 5 parts of a 5-part run and every control reachable."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from qtpy.QtCore import QPoint
from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox

from cryospire_core.analysis.explorer import ColourMode
from cryospire_core.services.parts import load_parts, merge, split
from cryospire_napari._explorer_widget import MAP_NAME, ExplorerWidget
from cryospire_napari._parts_widget import PartsWidget, part_colours
from cryospire_napari._scatter import ScatterView

#: The parts of ``five_part_run``.
N_PARTS = 5


@pytest.fixture(scope="module")
def five_part_run(parts_run, tmp_path_factory):
    """A copy of ``parts_run`` (tests/napari/conftest.py) with N_PARTS parts: while it has fewer,
    its largest part is split in two, as the Parts dock would. (The automatic rule finds 4 or 5
    on that tiny run depending on its level-2 constant; the table of 5 is what the fit test needs.)"""
    root = tmp_path_factory.mktemp("five") / "run"
    shutil.copytree(parts_run, root)
    parts = load_parts(root)
    assert parts.n_parts <= N_PARTS
    while parts.n_parts < N_PARTS:
        parts = split(parts, int(np.argmax(parts.counts())), 2)
    assert parts.saved and load_parts(root).n_parts == N_PARTS
    return root


@pytest.fixture(scope="module")
def merged_run(five_part_run, tmp_path_factory):
    """A copy of ``five_part_run`` with its parts 1 and 2 merged, as the Parts dock would (4 parts)."""
    root = tmp_path_factory.mktemp("merged") / "run"
    shutil.copytree(five_part_run, root)
    parts = merge(load_parts(root), 0, 1)
    assert parts.saved and load_parts(root).n_parts == N_PARTS - 1
    return root


def _wait_loaded(qtbot, widget: ExplorerWidget) -> None:
    qtbot.waitUntil(lambda: widget.session.explorer is not None and not widget.busy
                    and MAP_NAME in widget.viewer.layers and widget.colour_key is not None, timeout=60_000)


def _colour(qtbot, widget: ExplorerWidget, mode: ColourMode, words: str):
    """Colour by ``mode`` and wait for the legend whose title has ``words``."""
    widget.colour_by.setCurrentIndex(widget.colour_by.findData(mode))
    qtbot.waitUntil(lambda: not widget.busy and widget.legend.key is not None and words in widget.legend.key.title,
                    timeout=60_000)
    return widget.legend.key


def test_every_colouring_has_its_legend(make_napari_viewer, qtbot, five_part_run, tiny_star, merged_run):
    viewer = make_napari_viewer(show=True)
    widget = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.load_run(five_part_run, tiny_star)  # the run records no particle file: its ground truth is beside this one
    _wait_loaded(qtbot, widget)
    e, legend = widget.session.explorer, widget.legend
    n = e.n_particles
    assert e.gt_labels is not None and widget.session.colouring.mode == ColourMode.GROUND_TRUTH
    # The strip is under the canvas, beside it in the same pane: it covers no point.
    canvas = widget.scatter.canvas.native
    assert legend.isVisible() and legend.parentWidget() is canvas.parentWidget()
    # (after the layout pass that follows the run's first draw)
    qtbot.waitUntil(lambda: not legend.geometry().intersects(canvas.geometry()), timeout=5_000)
    assert legend.geometry().top() >= canvas.geometry().bottom()

    # Ground truth of the hinge's many steps: a colour bar between two named states.
    key = legend.key
    assert not key.categorical and key.title == "ground-truth state"
    assert legend.bar.isVisible() and not legend.entries.isVisible()
    assert legend.lo_label.text() == key.lo_text and legend.hi_label.text() == key.hi_text
    assert key.lo_text.startswith("hinge") and key.hi_text.startswith("hinge") and key.lo < key.hi

    # k-means states: one swatch, name and count per state, the counts summing to the particles,
    # each in the colour its points have.
    widget.k_states.setValue(4)
    key = _colour(qtbot, widget, ColourMode.STATE, "k-means state")
    assert key.categorical and [c.name for c in key.categories] == ["1", "2", "3", "4"]
    assert sum(c.count for c in key.categories) == n
    assert legend.entries.isVisible() and not legend.bar.isVisible()
    assert legend.entries.text().count("&#9632;") == 4 and "k-means state" in legend.entries.text()
    states = e.states(4)
    assert [c.count for c in key.categories] == np.bincount(states, minlength=4).tolist()
    np.testing.assert_allclose(widget.colours, part_colours(4)[states], atol=1e-6)

    # Presence of part 2: 0-1, the bar's ends at the values the colormap spans.
    widget.part.setValue(2)
    key = _colour(qtbot, widget, ColourMode.PRESENCE, "presence of part 2")
    values = e.colour_values(ColourMode.PRESENCE, 1)
    assert not key.categorical and "(0-1)" in key.title and legend.bar.isVisible()
    np.testing.assert_allclose((key.lo, key.hi), np.percentile(values, [1, 99]), rtol=1e-6)
    assert 0.0 <= key.lo <= key.hi <= 1.0
    assert (legend.lo_label.text(), legend.hi_label.text()) == (f"{key.lo:.2f}", f"{key.hi:.2f}")
    assert legend.title.text() == key.title

    # Displacement of part 2, in Å.
    key = _colour(qtbot, widget, ColourMode.DISPLACEMENT, "displacement of part 2")
    values = e.colour_values(ColourMode.DISPLACEMENT, 1)
    assert not key.categorical and "(Å)" in key.title and legend.title.text() == key.title
    np.testing.assert_allclose((key.lo, key.hi), np.percentile(values, [1, 99]), rtol=1e-6)
    assert key.lo >= 0.0 and legend.hi_label.text() == f"{key.hi:.1f}"

    # The density view's key is its own scale; back to points, the colouring's again.
    widget.view_kind.setCurrentIndex(widget.view_kind.findData(ScatterView.DENSITY))
    assert "particles per bin" in legend.key.title and legend.hi_label.text() == str(widget.scatter.density_max)
    assert widget.scatter.density_max > 0
    widget.view_kind.setCurrentIndex(widget.view_kind.findData(ScatterView.POINTS))
    assert legend.key is widget.colour_key and "displacement" in legend.key.title

    # Another run loads: the same colouring, with the new run's values.
    widget.load_run(merged_run)
    qtbot.waitUntil(lambda: widget.session.explorer is not e and not widget.busy and widget.legend.key is not None,
                    timeout=60_000)
    e2 = widget.session.explorer
    assert e2.n_parts == N_PARTS - 1 and widget.session.colouring.mode == ColourMode.DISPLACEMENT
    values = e2.colour_values(ColourMode.DISPLACEMENT, 1)
    np.testing.assert_allclose((legend.key.lo, legend.key.hi), np.percentile(values, [1, 99]), rtol=1e-6)
    assert legend.hi_label.text() == f"{legend.key.hi:.1f}"


def _scroll_to(widget: ExplorerWidget, c) -> None:
    """Scroll the dock so ``c`` is in view whole, when it is in the scrolled part
    (QScrollArea.ensureWidgetVisible shows only a spin box's text cursor)."""
    body = widget.scroll.widget()
    if not body.isAncestorOf(c):
        return
    bar, view = widget.scroll.verticalScrollBar(), widget.scroll.viewport().height()
    assert c.height() <= view
    top = c.mapTo(body, QPoint(0, 0)).y()
    if top < bar.value():
        bar.setValue(top)
    elif top + c.height() > bar.value() + view:
        bar.setValue(top + c.height() - view)


def _controls(widget: ExplorerWidget) -> list:
    return [c for c in widget.findChildren((QAbstractButton, QComboBox, QAbstractSpinBox))
            if c.isVisibleTo(widget) and widget.isAncestorOf(c) and c.parentWidget() is not None
            and not isinstance(c.parentWidget(), QAbstractSpinBox)]


@pytest.mark.parametrize("tabify", [True, False], ids=["tabified", "stacked"])
def test_the_dock_fits_a_950_px_window(make_napari_viewer, qtbot, five_part_run, tiny_star, tabify):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1500, 950)  # the open command's window
    viewer.window.add_dock_widget(PartsWidget(viewer, follow=False), name="Parts (cryospire)", area="right")
    widget = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Latent explorer (cryospire)", area="right", tabify=tabify)
    widget.load_run(five_part_run, tiny_star)
    _wait_loaded(qtbot, widget)
    table = widget.readout
    assert widget.session.explorer.n_parts == N_PARTS
    qtbot.waitUntil(lambda: table.rowCount() == N_PARTS, timeout=10_000)
    qtbot.wait(50)
    assert window.height() == 950  # the dock's least height does not push the window taller

    # Every row of the table is inside its viewport, once the table is scrolled into view: the
    # table itself does not scroll.
    _scroll_to(widget, table)
    # Drawn whole once the scroll lands, but for at most its bottom frame line (PyQt6 clips that
    # one pixel when the docks are stacked).
    qtbot.waitUntil(lambda: table.visibleRegion().boundingRect().height() >= table.height() - table.frameWidth(),
                    timeout=5_000)
    last = table.rowViewportPosition(N_PARTS - 1) + table.rowHeight(N_PARTS - 1)
    assert table.rowViewportPosition(0) >= 0 and last <= table.viewport().height(), (last, table.viewport().height())
    assert table.verticalScrollBar().maximum() == 0 and table.horizontalScrollBar().maximum() == 0

    # Every control is reachable: scrolled to, it is drawn whole (nothing cut off at the side).
    controls = _controls(widget)
    assert len(controls) >= 15
    for c in controls:
        _scroll_to(widget, c)
        qtbot.wait(5)
        assert c.visibleRegion().boundingRect() == c.rect(), (c, c.visibleRegion().boundingRect(), c.rect())
    if tabify:  # the dock has the window's height to itself: everything fits unscrolled
        assert widget.scroll.verticalScrollBar().maximum() == 0
