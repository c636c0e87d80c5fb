"""The plugin runs under the Qt binding the environment asks for: PyQt5 (the design card's,
installed by scripts/setup.sh) or PyQt6 (napari's default; scripts/test_pyqt6.sh runs the plugin's
tests in a second environment with QT_API=pyqt6)."""

from __future__ import annotations

import os


def test_qtpy_loads_the_requested_binding():
    import qtpy

    wanted = os.environ.get("QT_API")
    if wanted is None:  # the main suite: qtpy's first choice, PyQt5 in the environment setup.sh makes
        assert qtpy.API_NAME in ("PyQt5", "PyQt6")
    else:
        assert qtpy.API_NAME.lower() == wanted.lower()


def test_dock_widgets_build_under_this_binding(make_napari_viewer):
    from qtpy.QtWidgets import QWidget

    from cryospire_napari._explorer_widget import ExplorerWidget
    from cryospire_napari._parts_widget import PartsWidget
    from cryospire_napari._train_widget import TrainWidget

    viewer = make_napari_viewer()
    for cls in (TrainWidget, PartsWidget, ExplorerWidget):
        dock = cls(viewer)
        viewer.window.add_dock_widget(dock, name=cls.__name__)
        assert isinstance(dock, QWidget)
