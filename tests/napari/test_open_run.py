"""Opening a run shows its molecule: the best map on top and selected (3D, iso, camera on the
density), the parts as one translucent labels layer, the Gaussians hidden, every layer in Å on
the map's lattice; the Parts and Explorer docks follow the run the viewer shows (docked before
or after it opened, loading once); a dropped run folder opens, any other folder is napari's
business and no reader dialog appears."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from qtpy.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from qtpy.QtGui import QDragEnterEvent, QDropEvent
from qtpy.QtWidgets import QApplication

from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_napari import _layers
from cryospire_napari._explorer_widget import MAP_NAME, ExplorerWidget
from cryospire_napari._layers import (
    MAIN_MAP,
    MOLECULE_FILL,
    ROLE_KEY,
    RUN_KEY,
    molecule_bounds,
    show_molecule,
    viewer_camera,
)
from cryospire_napari._parts_widget import LABELS_NAME, POINTS_NAME, PartsWidget
from cryospire_napari._run_tracking import attach, same_run
from tests.napari.test_reader import make_run

PLUGIN = "cryospire-napari"
WAIT_MS = 60_000


@pytest.fixture
def run(parts_run, tmp_path):
    """A private copy of a run trained up to the parts (stage-1 map, latents, clustering)."""
    return shutil.copytree(parts_run, tmp_path / "run")


def open_run(viewer, root):
    return viewer.open(RunFolder(root).config_path, plugin=PLUGIN)


def counting(monkeypatch, cls) -> list:
    """The runs ``cls.load_run`` is asked to load (it still loads them)."""
    calls = []
    load = cls.load_run

    def counted(self, root):
        calls.append(root)
        load(self, root)

    monkeypatch.setattr(cls, "load_run", counted)
    return calls


def test_a_run_opens_as_its_map_over_its_parts(make_napari_viewer, run, monkeypatch):
    monkeypatch.setattr(_layers, "software_renderer", lambda: None)  # a GPU: the run opens in 3D
    viewer = make_napari_viewer()
    layers = open_run(viewer, run)
    assert [layer.name for layer in viewer.layers] == [POINTS_NAME, LABELS_NAME, "stage-1 map"]
    points, labels, main = layers
    # The map is on top and selected; the Gaussians' discs are hidden, the parts translucent.
    assert viewer.layers[-1] is main and viewer.layers.selection.active is main
    assert main.visible and labels.visible and not points.visible
    assert 0 < labels.opacity < 1 and labels.blending == "translucent_no_depth"
    assert main.rendering == "iso" and main.metadata[ROLE_KEY] == MAIN_MAP
    assert main.blending == "additive"  # the parts below tint the surface instead of being hidden
    assert all(same_run(layer.metadata[RUN_KEY], run) for layer in layers)
    # Every layer in Å on the map's lattice: the same scale and translate, the sliders step one voxel.
    apix = main.scale[0]
    assert apix == pytest.approx(12.0)  # the data's pixel size (the tiny run trains at its 32 px box)
    for layer in layers:
        assert tuple(layer.scale) == (apix,) * 3 and tuple(layer.translate) == tuple(main.translate)
    world = points.data * points.scale + points.translate
    centres = RunFolder(run).clustering().inputs.centres[:, ::-1]  # the clustered Gaussians, (x, y, z) Å
    np.testing.assert_allclose(world, centres, atol=1e-4)
    # 3D, ChimeraX's hand, the camera on the molecule and zoomed onto it.
    camera = viewer_camera(viewer)
    assert viewer.dims.ndisplay == 3 and tuple(camera.orientation) == ("towards", "up", "right")
    lo, hi = molecule_bounds(main)
    np.testing.assert_allclose(camera.center, (lo + hi) / 2, atol=1e-6)
    canvas = np.asarray(viewer.canvas.viewbox_size(viewer.layers), float)
    assert camera.zoom == pytest.approx(MOLECULE_FILL * np.min(canvas / (hi - lo)[1:]))
    box_zoom = np.min(canvas / (np.asarray(main.data.shape[1:]) * apix))
    assert camera.zoom > 1.2 * box_zoom  # the molecule, not the box, fills the canvas


def test_a_consensus_run_opens_as_its_map_and_hidden_gaussians(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    make_run(tmp_path / "run")
    gaussians, main = open_run(viewer, tmp_path / "run")
    assert (gaussians.name, main.name) == ("consensus gaussians", "consensus map")
    assert not gaussians.visible and main.visible and viewer.layers.selection.active is main


def test_software_opengl_opens_a_run_in_2d_through_the_molecule(make_napari_viewer, tmp_path, monkeypatch):
    viewer = make_napari_viewer(show=True)
    assert "llvmpipe" in (_layers.software_renderer() or "")  # Xvfb draws with Mesa's llvmpipe
    at = make_run(tmp_path / "run")
    main = open_run(viewer, tmp_path / "run")[-1]
    assert viewer.dims.ndisplay == 2 and viewer.layers.selection.active is main
    assert viewer.dims.point[0] == pytest.approx(main.data_to_world(at)[0], abs=main.scale[0])
    monkeypatch.setattr(_layers, "software_renderer", lambda: None)
    assert _layers.opening_ndisplay() == 3


def test_2d_view_shows_the_slice_through_the_molecule(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    at = make_run(tmp_path / "run")  # one blob at voxel (4, 10, 7), off the box centre
    main = open_run(viewer, tmp_path / "run")[-1]
    show_molecule(viewer, main, ndisplay=2)
    assert viewer.dims.ndisplay == 2
    z_world = main.data_to_world(at)[0]
    assert viewer.dims.point[0] == pytest.approx(z_world, abs=main.scale[0])
    np.testing.assert_allclose(viewer_camera(viewer).center[1:], main.data_to_world(at)[1:], atol=main.scale[0])


def test_docks_docked_before_follow_the_run_once(make_napari_viewer, qtbot, run, monkeypatch):
    parts_calls, explorer_calls = counting(monkeypatch, PartsWidget), counting(monkeypatch, ExplorerWidget)
    viewer = make_napari_viewer()
    parts, explorer = PartsWidget(viewer), ExplorerWidget(viewer)
    viewer.window.add_dock_widget(parts)
    viewer.window.add_dock_widget(explorer)
    assert parts_calls == [] and explorer_calls == []  # no run yet
    open_run(viewer, run)  # three layers of one run: one load each
    qtbot.waitUntil(lambda: parts.state is not None and MAP_NAME in viewer.layers, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not parts.busy and not explorer.busy, timeout=WAIT_MS)
    assert len(parts_calls) == 1 and len(explorer_calls) == 1
    assert same_run(parts.run_edit.text(), run) and same_run(explorer.run_edit.text(), run)
    # The dock updated the run's layers in place: still one labels and one points layer.
    assert [layer.name for layer in viewer.layers].count(LABELS_NAME) == 1 and POINTS_NAME in viewer.layers
    # The explorer's live map of the run takes the static map's place: nothing doubled on screen.
    assert not viewer.layers["stage-1 map"].visible and viewer.layers[MAP_NAME].visible
    assert sum(layer.visible for layer in viewer.layers) <= 3
    # Opening the run the docks show again loads nothing.
    open_run(viewer, run)
    qtbot.waitUntil(lambda: not parts.busy and not explorer.busy, timeout=WAIT_MS)
    assert len(parts_calls) == 1 and len(explorer_calls) == 1


def test_docks_added_after_find_the_open_run(make_napari_viewer, qtbot, run, monkeypatch):
    calls = counting(monkeypatch, PartsWidget)
    viewer = make_napari_viewer()
    open_run(viewer, run)
    parts, explorer = PartsWidget(viewer), ExplorerWidget(viewer)
    viewer.window.add_dock_widget(parts)
    viewer.window.add_dock_widget(explorer)
    qtbot.waitUntil(lambda: parts.state is not None and explorer.session.explorer is not None, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not parts.busy and not explorer.busy, timeout=WAIT_MS)
    assert len(calls) == 1 and same_run(parts.state.root, run)


def test_docks_from_the_plugins_menu_follow_and_open_dropped_runs(make_napari_viewer, qtbot, run):
    """Through napari's Plugins menu (the dock gets napari's proxy of the viewer, which hides
    private attributes): the dock follows the open run, and run folders dropped later open."""
    viewer = make_napari_viewer()
    open_run(viewer, run)
    _, parts = viewer.window.add_plugin_dock_widget(PLUGIN, "Parts")
    qtbot.waitUntil(lambda: parts.state is not None and not parts.busy, timeout=WAIT_MS)
    assert same_run(parts.state.root, run)
    viewer.layers.clear()
    drop(viewer.window._qt_viewer, run)
    assert [layer.name for layer in viewer.layers] == [POINTS_NAME, LABELS_NAME, "stage-1 map"]


def test_the_newest_run_wins_and_runs_without_parts_are_left_alone(make_napari_viewer, qtbot, run, tmp_path,
                                                                  monkeypatch):
    calls = counting(monkeypatch, PartsWidget)
    viewer = make_napari_viewer()
    parts = PartsWidget(viewer)
    viewer.window.add_dock_widget(parts)
    other = shutil.copytree(run, tmp_path / "other")
    parts.load_run(other)  # loaded by hand (the Load button)
    qtbot.waitUntil(lambda: parts.state is not None and not parts.busy, timeout=WAIT_MS)
    make_run(tmp_path / "consensus_only")
    open_run(viewer, tmp_path / "consensus_only")  # nothing for the Parts dock: it keeps its run
    assert len(calls) == 1 and same_run(parts.run_edit.text(), other)
    open_run(viewer, run)  # opened after: the dock follows it
    qtbot.waitUntil(lambda: not parts.busy and same_run(parts.state.root, run), timeout=WAIT_MS)
    assert len(calls) == 2


def drop(widget, *paths) -> None:
    """Drag ``paths`` onto ``widget`` and drop them, as from a file manager (Qt delivers the drop
    to the widget that accepted the drag)."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    enter = QDragEnterEvent(QPoint(10, 10), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier)
    assert QApplication.sendEvent(widget, enter) and enter.isAccepted()
    QApplication.sendEvent(widget, QDropEvent(QPointF(10, 10), Qt.CopyAction, mime, Qt.LeftButton, Qt.NoModifier))


def test_a_dropped_run_folder_opens_and_other_folders_are_left_to_napari(make_napari_viewer, run, tmp_path, dialogs,
                                                                     notes):
    from skimage.io import imsave

    viewer = make_napari_viewer()
    attach(viewer)  # what the docks, the open command and the run reader do
    qt_viewer = viewer.window._qt_viewer
    drop(qt_viewer._welcome_widget, run)  # an empty viewer: napari's welcome screen takes the drop
    assert [layer.name for layer in viewer.layers] == [POINTS_NAME, LABELS_NAME, "stage-1 map"]
    viewer.layers.clear()
    drop(qt_viewer, run)  # over the layers' canvas
    assert [layer.name for layer in viewer.layers] == [POINTS_NAME, LABELS_NAME, "stage-1 map"]
    # A folder of images: napari's own folder reader opens it, as without the plugin.
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    imsave(pictures / "a.png", np.full((8, 8), 200, np.uint8), check_contrast=False)
    drop(qt_viewer, pictures)
    assert viewer.layers[-1].name == "pictures" and viewer.layers[-1].data.shape == (8, 8)
    assert not dialogs and QApplication.activeModalWidget() is None
    assert not any("cryospire" in str(n.message) for n in notes)


def test_part_labels_reach_napari_in_the_smallest_unsigned_type():
    # napari maps wider label types through a numba function compiled on first use (seconds on
    # the GUI thread); uint8 / uint16 it draws as they are.
    labels = np.zeros((4, 4, 4), np.int32)
    labels[1, 2, 3] = 5
    small = _layers.label_texture(labels)
    assert small.dtype == np.uint8 and np.array_equal(small, labels)
    labels[0, 0, 0] = 300
    assert _layers.label_texture(labels).dtype == np.uint16


def test_labels_colouring_is_compiled_in_a_thread_of_its_own(qtbot):
    from cryospire_napari._workers import warm_up_labels

    thread = warm_up_labels()
    assert thread is warm_up_labels() and thread.name == "cryospire labels warm-up"  # once per process
    thread.join(120)
    assert not thread.is_alive()
