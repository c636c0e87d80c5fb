"""The viewer shows a run as it opens, and the docks follow the run the viewer shows.

A run folder opens as layers whose metadata name the run folder (:data:`._layers.RUN_KEY`) and
their role (:data:`._layers.ROLE_KEY`; :func:`._layers.run_layers`). :func:`attach` (once per
viewer; the run reader attaches napari's current viewer, the docks and
``python -m cryospire_napari.open`` theirs) makes the viewer

- show the molecule when a run's main map is added: 3D, ChimeraX's hand, the camera on the
  density (:func:`._layers.show_molecule`). A reader cannot do this itself: napari gives readers
  no viewer, and the map is the last of the run's layers, so the others are in place by then.
- open a run *folder* dropped on its canvas, as its ``config.json``. napari offers a dropped
  folder to every reader that accepts folders and asks "which plugin?" in a dialog when there
  are two (napari's own folder reader is always one), so the plugin's reader cannot accept
  folders without that dialog popping up for every folder anyone opens (see :mod:`._reader`).
  This filter takes a drop only when every dropped path is a run folder
  (:func:`._reader.is_run_folder`) and leaves every other drop to napari. It is installed once
  the plugin has run in the viewer (a dock, a run opened through its ``config.json``, the open
  command): napari has no start-up hook for plugins.

:class:`RunFollower` makes a dock that shows one run at a time (Parts, Latent explorer) follow
the run the viewer shows:

- a dock added after a run was opened loads the run of the topmost run layer at construction;
  a dock already docked loads each run opened later, once its first layer is added;
- the most recently opened run wins: opening a run in the viewer replaces the one the dock
  shows, even one loaded there with its Load button; a run loaded with Load is kept until
  another run is opened in the viewer (layers of the run the dock already shows, and the docks'
  own layers, load nothing);
- a run is loaded once: its other layers, and reopening the run the dock shows, load nothing;
- a run the dock has nothing to show for (no parts yet, no latents yet) is left alone.

The loading is the dock's own ``load_run``, which runs in the dock's background job.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QWidget

from cryospire_core.pipeline.runfolder import RunFolder

from ._layers import MAIN_MAP, ROLE_KEY, RUN_KEY, opening_ndisplay, show_molecule
from ._notify import notify_error
from ._workers import CloseWatcher, warm_up_labels

PLUGIN = "cryospire-napari"

#: id(viewer) -> a weak reference to each viewer :func:`attach` has set up.
_ATTACHED: dict[int, weakref.ref] = {}


def run_of(layer: Any) -> Path | None:
    """The run folder a layer belongs to (its metadata), None for any other layer."""
    root = layer.metadata.get(RUN_KEY)
    return Path(root) if root else None


def same_run(a: str | os.PathLike | None, b: str | os.PathLike | None) -> bool:
    """Whether two run folder paths name the same folder (links and relative paths resolved)."""
    if not a or not b:
        return False
    return os.path.realpath(a) == os.path.realpath(b)


def attach(viewer: Any) -> None:
    """Set ``viewer`` up (see the module docstring); calling it again does nothing."""
    if viewer is None:
        return
    # napari hands plugin widgets a proxy that hides private attributes; the drop filter needs
    # the real viewer's Qt widget (napari has no public drop hook).
    viewer = getattr(viewer, "__wrapped__", viewer)
    for key, ref in list(_ATTACHED.items()):
        if ref() is None:
            del _ATTACHED[key]
    if id(viewer) in _ATTACHED and _ATTACHED[id(viewer)]() is viewer:
        return
    _ATTACHED[id(viewer)] = weakref.ref(viewer)
    warm_up_labels()  # for the runs opened after this one
    viewer_ref = weakref.ref(viewer)  # the connection must not keep a closed viewer alive

    def on_inserted(event: Any) -> None:
        layer, v = event.value, viewer_ref()
        if v is None or layer.metadata.get(ROLE_KEY) != MAIN_MAP:
            return
        try:
            show_molecule(v, layer, opening_ndisplay())
        except Exception as exc:  # a view that cannot be fitted must not lose the layers
            notify_error(exc, f"showing {layer.name}")

    viewer.layers.events.inserted.connect(on_inserted)
    qt_viewer = getattr(getattr(viewer, "window", None), "_qt_viewer", None)
    if qt_viewer is not None:
        # The canvas and, on an empty viewer, napari's welcome screen over it take drops.
        drop = RunFolderDrop(viewer, qt_viewer)
        for widget in (qt_viewer, *qt_viewer.findChildren(QWidget)):
            if widget.acceptDrops():
                widget.installEventFilter(drop)


class RunFolderDrop(QObject):
    """Opens dropped run folders through their ``config.json`` (see the module docstring)."""

    def __init__(self, viewer: Any, qt_viewer: QObject) -> None:
        super().__init__(qt_viewer)
        self._viewer = weakref.ref(viewer)

    def eventFilter(self, obj: Any, event: Any) -> bool:
        if event.type() != QEvent.Drop or self._viewer() is None:
            return False
        from ._reader import is_run_folder

        urls = event.mimeData().urls() if event.mimeData() is not None else []
        paths = [Path(url.toLocalFile()) for url in urls if url.isLocalFile()]
        if not paths or len(paths) != len(urls) or not all(is_run_folder(p) for p in paths):
            return False
        event.acceptProposedAction()
        for path in paths:  # the reader reports a broken run itself and opens nothing
            self._viewer().open(str(RunFolder(path).config_path), plugin=PLUGIN)
        return True


class RunFollower(QObject):
    """Makes a dock follow the run the viewer shows (see the module docstring).

    ``load(root)`` loads a run into the dock (asynchronously), ``shown()`` is the run folder the
    dock shows or is loading ("" for none), ``has(root)`` whether the run has anything for the
    dock. Disconnects when the dock closes.
    """

    def __init__(self, dock: Any, viewer: Any, load: Callable[[Path], None], shown: Callable[[], str],
                 has: Callable[[Path], bool]) -> None:
        super().__init__(dock)
        self._viewer = viewer
        self._load, self._shown, self._has = load, shown, has
        attach(viewer)
        viewer.layers.events.inserted.connect(self._inserted)
        self._close_watcher = CloseWatcher(dock, self.stop)
        for layer in reversed(viewer.layers):  # topmost first
            root = run_of(layer)
            if root is not None:
                self.follow(root)
                break

    def stop(self) -> None:
        """Stop following (the dock is closing)."""
        if self._viewer is not None:
            self._viewer.layers.events.inserted.disconnect(self._inserted)
            self._viewer = None

    def _inserted(self, event: Any) -> None:
        root = run_of(event.value)
        if root is not None:
            self.follow(root)

    def follow(self, root: Path) -> None:
        """Load the run ``root`` unless the dock shows it already or has nothing to show for it."""
        if same_run(root, self._shown()) or not self._has(root):
            return
        self._load(root)


def has_parts(root: Path) -> bool:
    """Whether the run's part discovery has finished (the Parts dock has something to show)."""
    return RunFolder(root).stage_done("parts")


def has_latents(root: Path) -> bool:
    """Whether the run has latents and a model that renders them (the Latent explorer's)."""
    run = RunFolder(root)
    return run.latents_path.is_file() and run.trained_stage() is not None


def hide_run_maps(viewer: Any, root: Path) -> None:
    """Hide the main map of the run ``root`` (the Latent explorer's live map of that run takes
    its place: two surfaces in one place would hide each other)."""
    for layer in viewer.layers:
        if layer.metadata.get(ROLE_KEY) == MAIN_MAP and same_run(run_of(layer), root):
            layer.visible = False
