"""Screenshots of the latent explorer in use on a trained run.

``xvfb-run -a -s "-screen 0 1600x1000x24" python docs/screenshots/explorer_screenshots.py RUN NAME``
writes ``NAME_scatter.png`` (the scatter coloured by ground truth or k-means state, the map at
the cursor and the part readout) and ``NAME_traversal.png`` (a PC1 traversal half-way, the map
coloured by part, the readout plotted along the traversal) into docs/screenshots/.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from cryospire_napari._explorer_widget import ExplorerWidget
from cryospire_napari._layers import set_chimerax_view

OUT = Path(__file__).resolve().parent


def settle(app, widget: ExplorerWidget, until=lambda: True, timeout: float = 300.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        app.processEvents()
        if not widget.busy and until():
            break
        time.sleep(0.05)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)


def shoot(viewer: napari.Viewer, path: Path) -> None:
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path}")


def main(run: Path, name: str) -> None:
    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(title=f"cryospire: {run.name}")
    viewer.window.resize(1600, 1000)
    widget = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Latent explorer (cryospire)", area="right")
    widget.load_run(run)
    settle(app, widget, lambda: widget.session.explorer is not None and widget.last_frame is not None)
    set_chimerax_view(viewer)
    e = widget.session.explorer
    # cursor on the densest state's centre, away from the mean
    states = e.states(widget.k_states.value())
    biggest = np.bincount(states).argmax()
    widget.session.move_cursor(widget.session.embedding.points[states == biggest].mean(0))
    settle(app, widget)
    shoot(viewer, OUT / f"{name}_scatter.png")

    widget.show_labels.setChecked(True)
    widget.colour_by.setCurrentText("displacement")
    widget.trav_kind.setCurrentText("PC1")
    widget.trav_steps.setValue(20)
    widget.compute_traversal()
    settle(app, widget, lambda: widget.session.traversal is not None)
    widget.session.step_to(12)
    settle(app, widget)
    shoot(viewer, OUT / f"{name}_traversal.png")
    viewer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
