"""Parts dock: layers and table show a run's parts; re-cluster, merge and split update them;
soft masks are exported one file per part; a run from a newer cryospire is refused clearly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from qtpy.QtCore import Qt

from cryospire_core.io.chimerax import SCRIPT_NAME
from cryospire_core.io.mrc import read_map
from cryospire_core.models.parts import PartClustering
from cryospire_napari._parts_widget import (
    LABELS_NAME,
    POINTS_NAME,
    PartsWidget,
    part_colours,
)
from tests.core.test_chimerax import opened, volume_settings


@pytest.fixture
def run(parts_run, tmp_path):
    """A private copy (the dock writes edits back into RUN/parts/clustering.npz)."""
    return shutil.copytree(parts_run, tmp_path / "run")


def loaded(make_napari_viewer, qtbot, run) -> PartsWidget:
    viewer = make_napari_viewer()
    widget = PartsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.load_run(run)
    qtbot.waitUntil(lambda: not widget.busy and widget.state is not None, timeout=20_000)
    return widget


def test_layers_and_table_match_the_clustering(make_napari_viewer, qtbot, run):
    widget = loaded(make_napari_viewer, qtbot, run)
    clustering = PartClustering.from_npz(run / "parts" / "clustering.npz")
    K = clustering.n_parts
    labels, points = widget.viewer.layers[LABELS_NAME], widget.viewer.layers[POINTS_NAME]
    assert labels.data.shape == (32, 32, 32) and labels.data.max() <= K and labels.data.max() >= 1
    assert labels.scale[0] == pytest.approx(12.0)
    assert len(points.data) == len(clustering.part_index)
    assert widget.table.rowCount() == K
    counts = [int(widget.table.item(k, 2).text()) for k in range(K)]
    assert counts == np.bincount(clustering.part_index, minlength=K).tolist()
    # The table swatch, the Labels colour and the points' colour of part 1 agree.
    colour = part_colours(K)[0]
    np.testing.assert_allclose(labels.colormap.map(np.array([1]))[0], colour, atol=1e-6)
    first = int(np.flatnonzero(clustering.part_index == 0)[0])
    np.testing.assert_allclose(points.face_color[first], colour, atol=1e-6)
    swatch = widget.table.item(0, 0).data(Qt.DecorationRole)
    assert (swatch.red(), swatch.green(), swatch.blue()) == tuple(int(round(255 * c)) for c in colour[:3])
    # Hiding part 1 hides its points and makes its label transparent.
    widget.set_part_visible(0, False)
    assert not points.shown[first] and labels.colormap.map(np.array([1]))[0][3] == 0


def test_recluster_merge_split_update_layers_table_and_file(make_napari_viewer, qtbot, run):
    widget = loaded(make_napari_viewer, qtbot, run)
    labels = widget.viewer.layers[LABELS_NAME]
    widget.recluster(2, 2)
    qtbot.waitUntil(lambda: not widget.busy, timeout=20_000)
    assert widget.table.rowCount() == 4
    assert set(np.unique(labels.data)) <= {0, 1, 2, 3, 4} and labels.data.max() >= 2
    assert PartClustering.from_npz(run / "parts" / "clustering.npz").n_parts == 4  # written back

    widget.table.selectRow(0)
    widget.split_k.setValue(2)
    widget._split_selected()
    qtbot.waitUntil(lambda: not widget.busy, timeout=20_000)
    assert widget.table.rowCount() == 5 and widget.state.n_parts == 5

    widget.table.clearSelection()
    widget.merge(0, 4)
    qtbot.waitUntil(lambda: not widget.busy, timeout=20_000)
    assert widget.table.rowCount() == 4
    saved = PartClustering.from_npz(run / "parts" / "clustering.npz")
    np.testing.assert_array_equal(saved.part_index, widget.state.clustering.part_index)
    assert "edited by hand" in saved.rule


def test_export_soft_masks(make_napari_viewer, qtbot, run, tmp_path, notes):
    widget = loaded(make_napari_viewer, qtbot, run)
    paths = widget.export_masks(tmp_path / "masks")
    assert len(paths) == widget.state.n_parts and widget.busy  # written in the background job
    qtbot.waitUntil(lambda: not widget.busy, timeout=20_000)
    assert "ChimeraX: open" in widget.status.text()
    script = tmp_path / "masks" / SCRIPT_NAME
    assert opened(script) == [["part_labels.mrc"]] + [[p.name] for p in paths]
    colours = [volume_settings(script)[k + 2]["color"] for k in range(len(paths))]
    assert colours == ["#" + "".join(f"{round(255 * c):02x}" for c in rgba[:3])
                       for rgba in part_colours(len(paths))]  # the colours napari shows
    m = read_map(paths[0])
    assert m.data.shape == (32, 32, 32) and m.apix == pytest.approx(12.0)
    assert m.data.max() == pytest.approx(1.0) and m.data.min() >= 0.0
    inside = widget.state.labels == 1
    assert np.all(m.data[inside] == 1.0)
    paths[-1].write_text("the user's own")
    assert widget.export_masks(tmp_path / "masks") == []  # refused with a notification: nothing replaced
    assert paths[-1].read_text() == "the user's own"
    assert any("part_labels.mrc: part masks: expected a file name not in use" in str(n.message) for n in notes)
    np.testing.assert_array_equal(read_map(tmp_path / "masks" / "part_labels.mrc").data, widget.state.labels)
    assert len(widget.export_masks(tmp_path / "masks", overwrite=True)) == widget.state.n_parts
    qtbot.waitUntil(lambda: not widget.busy, timeout=20_000)
    assert read_map(paths[-1]).data.max() == pytest.approx(1.0)  # replaced


def test_newer_run_format_is_a_clear_notification(make_napari_viewer, qtbot, run, notes):
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    viewer = make_napari_viewer()
    widget = PartsWidget(viewer)
    widget.load_run(run)
    qtbot.waitUntil(lambda: not widget.busy, timeout=20_000)
    assert widget.state is None and LABELS_NAME not in viewer.layers
    assert any("format_version" in str(n.message) and "upgrade" in str(n.message) for n in notes)
