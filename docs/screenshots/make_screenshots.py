"""Make the plugin screenshots from the sample data, as a person would see them in napari.

Run from the repository under a display (``xvfb-run -a -s "-screen 0 1600x1000x24"
.venv/bin/python docs/screenshots/make_screenshots.py [files|docks|all|demo RUN]``); the sample
data are made on first use in the cache folder (``CRYOSPIRE_CACHE`` overrides it). ``docks`` trains
a small run through the train dock (a few minutes on 2 CPU cores) for train_dock.png,
review.png and parts_dock.png. ``demo RUN`` opens a trained run (the demo's: ``cryospire demo
--out DEMO --viewer none``, then ``demo DEMO/run``; a copy of the run folder is opened, so
nothing is written into it) in the open command's 1500x950 window for parts_layer.png (the
Parts dock and the parts labels over a slice of the map) and explorer_drag.png (the Latent
explorer mid-drag: the cursor on the scatter, its legend, the live map and the part readout). ``open_run.png`` is the open command's own screenshot of the
demo run (``cryospire demo --out DEMO --viewer none``, then ``xvfb-run -a .venv/bin/python -m
cryospire_napari.open DEMO/run --screenshot open_run.png``); the train_dock.png in the README
was taken during stage 2 of a 1,200-image 32 px run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari

from cryospire_napari._layers import set_chimerax_view
from cryospire_napari._sample_data import DEFAULT_SPEC, ensure_sample

OUT = Path(__file__).resolve().parent
PLUGIN = "cryospire-napari"


def shoot(viewer: napari.Viewer, name: str) -> None:
    """Save what a person sees, without the toasts napari shows at start-up (e.g. its PyQt5
    deprecation notice: this setup runs PyQt5 on purpose)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    viewer.screenshot(OUT / name, canvas_only=False)


def viewer_with(path: Path, title: str) -> napari.Viewer:
    viewer = napari.Viewer(title=title)
    viewer.window.resize(1200, 800)
    viewer.open(path, plugin=PLUGIN)
    return viewer


def wait(app, until, timeout: float = 900.0) -> None:
    """Run the event loop until ``until()`` is true."""
    end = time.monotonic() + timeout
    while not until():
        if time.monotonic() > end:
            raise TimeoutError("screenshot scenario did not reach its state")
        app.processEvents()
        time.sleep(0.02)


def dock_screenshots() -> None:
    """The train dock during stage 1, the review of the proposed parts, and the parts dock."""
    import dataclasses
    import tempfile

    from cryospire_core.pipeline.config import TrainConfig
    from cryospire_core.sim.simulate import simulate, write_simulation
    from cryospire_napari._parts_widget import LABELS_NAME, POINTS_NAME, PartsWidget
    from cryospire_napari._train_widget import PREVIEW_NAME, TrainWidget

    tmp = Path(tempfile.mkdtemp(prefix="cryospire_shots_"))
    write_simulation(tmp / "data", simulate("hinge", 48, 3000, snr=1.0, seed=1))
    cfg = TrainConfig.for_profile("cpu")
    rep = dataclasses.replace
    cfg.consensus = rep(cfg.consensus, epochs=2, map_fit_steps=100, n_gaussians=512)
    cfg.discovery = rep(cfg.discovery, epochs=6, n_gaussians=512)
    cfg.hierarchical = rep(cfg.hierarchical, epochs=2, n_gaussians=1024, hidden=64, depth=2)

    viewer = napari.Viewer(title="cryospire: train dock")
    viewer.window.resize(1400, 900)
    app = napari.qt.get_qapp()
    dock = TrainWidget(viewer)
    viewer.window.add_dock_widget(dock, name="cryospire: Train", area="right")
    dock.config = cfg
    dock.particles.edit.setText(str(tmp / "data" / "particles.star"))
    dock.out.edit.setText(str(tmp / "run"))
    dock.review.setChecked(True)
    dock.start()
    wait(app, lambda: "stage 1" in dock.stage_label.text() and dock.bar.value() > 0.6 * dock.bar.maximum()
         and PREVIEW_NAME in viewer.layers)
    set_chimerax_view(viewer)
    viewer.layers[PREVIEW_NAME].rendering = "iso"
    shoot(viewer, "train_dock.png")
    wait(app, lambda: not dock.running and not dock.parts.busy and LABELS_NAME in viewer.layers)
    viewer.layers[PREVIEW_NAME].visible = False
    viewer.layers[POINTS_NAME].visible = False  # the part map (Labels) alone
    viewer.layers.selection.active = viewer.layers[LABELS_NAME]
    set_chimerax_view(viewer)
    shoot(viewer, "review.png")
    viewer.close()

    viewer = napari.Viewer(title="cryospire: parts")
    viewer.window.resize(1400, 900)
    parts = PartsWidget(viewer)
    viewer.window.add_dock_widget(parts, name="cryospire: Parts", area="right")
    parts.load_run(tmp / "run")
    wait(app, lambda: not parts.busy and parts.state is not None)
    if parts.state.n_parts >= 2:
        parts.split(0, 2)
        wait(app, lambda: not parts.busy)
    set_chimerax_view(viewer)
    viewer.layers[LABELS_NAME].visible = False
    parts.table.selectRow(0)
    shoot(viewer, "parts_dock.png")
    viewer.close()


def file_screenshots() -> None:
    root = ensure_sample(DEFAULT_SPEC, with_run=True)

    viewer = viewer_with(root / "run" / "config.json", "cryospire: consensus run")
    set_chimerax_view(viewer)
    shoot(viewer, "run_consensus_map.png")  # the Gaussians open hidden
    viewer.close()

    viewer = viewer_with(root / "data" / "particles.star", "cryospire: particles")
    viewer.dims.set_point(0, 7)
    shoot(viewer, "particles_star.png")
    viewer.close()


def demo_screenshots(run: Path) -> None:
    """parts_layer.png and explorer_drag.png of a copy of the trained run folder ``run``."""
    import shutil
    import tempfile

    import numpy as np

    from cryospire_core.pipeline.runfolder import RunFolder
    from cryospire_napari._explorer_widget import MAP_NAME, ExplorerWidget
    from cryospire_napari._layers import show_molecule
    from cryospire_napari._parts_widget import LABELS_NAME, PartsWidget
    from cryospire_napari._run_tracking import attach

    copy = Path(tempfile.mkdtemp(prefix="cryospire_shots_")) / run.name
    shutil.copytree(run, copy)
    particles = RunFolder(run).particles_path()  # where the original finds them (a copy elsewhere may not)
    app = napari.qt.get_qapp()
    viewer = napari.Viewer(title=f"cryospire: {run.name}")
    viewer.window._qt_window.resize(1500, 950)  # the open command's window
    attach(viewer)
    parts, explorer = PartsWidget(viewer), ExplorerWidget(viewer)
    viewer.window.add_dock_widget(parts, name="Parts (cryospire)", area="right")
    viewer.window.add_dock_widget(explorer, name="Latent explorer (cryospire)", area="right", tabify=True)
    app.processEvents()
    viewer.open(str(RunFolder(copy).config_path), plugin=PLUGIN)
    wait(app, lambda: not parts.busy and parts.state is not None and LABELS_NAME in viewer.layers)

    # The parts labels over a 2D slice through the molecule, every part in the Parts table.
    parts.parentWidget().raise_()
    run_map = next(layer for layer in viewer.layers if isinstance(layer, napari.layers.Image))
    show_molecule(viewer, run_map, ndisplay=2)
    viewer.layers[LABELS_NAME].visible = True
    viewer.layers[LABELS_NAME].opacity = 0.6
    viewer.layers.selection.active = viewer.layers[LABELS_NAME]
    wait(app, lambda: True, 1.0)
    shoot(viewer, "parts_layer.png")

    # The explorer mid-drag, the points coloured by k-means state (the legend lists them).
    explorer.parentWidget().raise_()
    explorer.load_run(copy, particles)
    wait(app, lambda: explorer.session.explorer is not None and not explorer.busy and MAP_NAME in viewer.layers
         and explorer.colour_key is not None)
    explorer.colour_by.setCurrentIndex(explorer.colour_by.findText("state"))
    explorer.show_labels.setChecked(True)
    wait(app, lambda: not explorer.busy and "k-means" in explorer.legend.key.title)
    emb, states = explorer.session.embedding, explorer.session.explorer.states(explorer.k_states.value())
    centres = [emb.points[states == s].mean(0) for s in np.unique(states)]
    a, b = explorer.scatter.to_canvas(centres[0]), explorer.scatter.to_canvas(centres[-1])
    explorer.press(a)
    for t in np.linspace(0, 0.6, 8)[1:]:  # held down part of the way: mid-drag
        explorer.move(a + t * (b - a))
        wait(app, lambda: not explorer.busy)
    show_molecule(viewer, viewer.layers[MAP_NAME], ndisplay=3)
    wait(app, lambda: not explorer.busy, 300.0)
    shoot(viewer, "explorer_drag.png")
    explorer.release(a + 0.6 * (b - a))
    viewer.close()


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("files", "all"):
        file_screenshots()
    if which in ("docks", "all"):
        dock_screenshots()
    if which == "demo":
        demo_screenshots(Path(sys.argv[2]))
    print(f"screenshots in {OUT}")


if __name__ == "__main__":
    main()
