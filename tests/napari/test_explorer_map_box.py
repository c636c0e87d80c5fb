"""The explorer dock's map box in a real viewer: choosing 64^3 for a run trained at 32 px
re-renders the map and the part labels at 64^3 in the same layers, and the density stays where
it was in the viewer's world (Å), as does the box centre."""

from __future__ import annotations

import numpy as np

from cryospire_napari._explorer_widget import LABELS_NAME, MAP_NAME, ExplorerWidget


def _world_centre_of_mass(layer) -> np.ndarray:
    """(z, y, x) Å in the viewer's world of the positive density of an Image layer."""
    d = np.clip(np.asarray(layer.data, np.float64), 0, None)
    index = np.array([np.sum(d * g) / d.sum() for g in np.indices(d.shape)])
    return np.asarray(layer.data_to_world(index))


def test_map_box_re_renders_in_place(make_napari_viewer, qtbot, parts_run):
    viewer = make_napari_viewer()
    widget = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.load_run(parts_run)
    qtbot.waitUntil(lambda: widget.session.explorer is not None and not widget.busy and MAP_NAME in viewer.layers,
                    timeout=30_000)
    e = widget.session.explorer
    d = e.lattice.box
    boxes = [widget.map_box.itemData(i) for i in range(widget.map_box.count())]
    assert boxes == e.map_boxes() and boxes[0] == d == 32 and 256 in boxes
    assert widget.map_box.currentData() == d and "trained" in widget.map_box.currentText()
    widget.show_labels.setChecked(True)
    qtbot.waitUntil(lambda: not widget.busy and LABELS_NAME in viewer.layers, timeout=30_000)
    layer, labels = viewer.layers[MAP_NAME], viewer.layers[LABELS_NAME]
    before = _world_centre_of_mass(layer)
    np.testing.assert_allclose(layer.data_to_world([d // 2] * 3), 0.0, atol=1e-9)  # the model origin

    assert "maps at" not in widget.status.text()
    widget.map_box.setCurrentIndex(widget.map_box.findData(2 * d))
    assert widget.session.map_box == 2 * d
    assert f"trained at {d} px" in widget.status.text() and f"maps at {2 * d}^3" in widget.status.text()
    qtbot.waitUntil(lambda: not widget.busy and layer.data.shape == (2 * d,) * 3, timeout=30_000)
    assert viewer.layers[MAP_NAME] is layer and labels.data.shape == (2 * d,) * 3  # the same layers, re-rendered
    half = e.lattice.apix / 2
    np.testing.assert_allclose(layer.scale, (half,) * 3)
    np.testing.assert_allclose(labels.scale, (half,) * 3)
    np.testing.assert_allclose(layer.data_to_world([d] * 3), 0.0, atol=1e-9)  # the new centre voxel, still at 0 Å
    np.testing.assert_allclose(labels.translate, layer.translate)
    # the density has not moved: within a quarter of the coarse voxel
    np.testing.assert_allclose(_world_centre_of_mass(layer), before, atol=e.lattice.apix / 4)
    np.testing.assert_array_equal(widget.last_frame.volume, layer.data)
    assert widget.last_frame.lattice == e.lattice.cropped(2 * d)

    widget.map_box.setCurrentIndex(widget.map_box.findData(d))  # back to the trained box: the session's None
    assert widget.session.map_box is None and "maps at" not in widget.status.text()
    qtbot.waitUntil(lambda: not widget.busy and layer.data.shape == (d,) * 3, timeout=30_000)
    np.testing.assert_allclose(layer.scale, (e.lattice.apix,) * 3)
    np.testing.assert_allclose(_world_centre_of_mass(layer), before, atol=1e-6)


def test_the_part_table_shows_every_part_in_its_own_pane(make_napari_viewer, qtbot, parts_run):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 950)  # the open command's window
    widget = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.load_run(parts_run)
    qtbot.waitUntil(lambda: widget.session.explorer is not None and not widget.busy and MAP_NAME in viewer.layers,
                    timeout=30_000)
    table, n = widget.readout, widget.session.explorer.n_parts
    qtbot.waitUntil(lambda: table.rowCount() == n, timeout=10_000)
    assert 2 <= n <= table.ROWS_SHOWN

    def last_row_bottom() -> int:
        return table.rowViewportPosition(n - 1) + table.rowHeight(n - 1)

    # The splitter gives the pane its height in the next layout pass (later on a busy machine).
    qtbot.waitUntil(lambda: last_row_bottom() <= table.viewport().height(), timeout=5_000)
    assert table.rowViewportPosition(0) == 0, "the table starts scrolled"
    assert table.horizontalScrollBar().maximum() == 0  # no sideways scrolling either
    # The scatter, the table's pane and the traversal's share a splitter: the user drags the handles.
    assert [widget.splitter.indexOf(w) for w in (widget.scatter.canvas.native.parentWidget(), table.parentWidget())] == [0, 1]
