"""Open a run folder in napari with the cryospire docks: ``python -m cryospire_napari.open RUN``.

The Train, Parts and Latent explorer docks are docked first, then the run is opened with the
plugin's reader, as File > Open of RUN/config.json does: the run's best map on top, in 3D and
ChimeraX's hand, the camera on the molecule, its parts as a translucent label map and its
Gaussians as a hidden points layer; the Parts dock then shows the run's parts and the Latent
explorer its latents (once a latent stage has run), by themselves (:mod:`._run_tracking`).
``--screenshot PNG`` writes a screenshot of the whole window instead of staying open (for
machines without a display: run it under ``xvfb-run -a``). ``cryospire demo`` calls this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def open_run(run: Path, screenshot: Path | None = None) -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    from cryospire_core.io.atomic import atomic_path
    from cryospire_core.pipeline.runfolder import RunFolder

    from ._explorer_widget import ExplorerWidget
    from ._parts_widget import PartsWidget
    from ._run_tracking import attach
    from ._train_widget import TrainWidget
    from ._workers import warm_up_labels

    viewer = napari.Viewer(title=f"cryospire: {run.name}", show=True)
    viewer.window.resize(1500, 950)
    attach(viewer)
    parts, explorer = PartsWidget(viewer), ExplorerWidget(viewer)
    viewer.window.add_dock_widget(TrainWidget(viewer), name="Train (cryospire)", area="right")
    viewer.window.add_dock_widget(parts, name="Parts (cryospire)", area="right", tabify=True)
    viewer.window.add_dock_widget(explorer, name="Latent explorer (cryospire)", area="right", tabify=True)
    app = QApplication.instance()
    labels_ready = warm_up_labels()  # started by the Parts dock; the window stays live meanwhile
    while labels_ready.is_alive():
        app.processEvents()
        labels_ready.join(0.02)
    app.processEvents()  # the canvas takes its size beside the docks: the view fits it
    viewer.open(str(RunFolder(run).config_path), plugin="cryospire-napari")
    if screenshot is None:
        napari.run()
        return 0
    for _ in range(600):  # let the Parts dock's background load finish (at most ~60 s)
        app.processEvents()
        if not parts.busy and not explorer.busy:
            break
        parts.thread().msleep(100)
    app.processEvents()
    with atomic_path(screenshot) as tmp:  # replaces a link at that name, never writes through it
        viewer.screenshot(str(tmp), canvas_only=False)
    viewer.close()
    print(f"wrote {screenshot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cryospire_napari.open", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder written by `cryospire train` (or the consensus)")
    parser.add_argument("--screenshot", type=Path, help="write a PNG of the window and exit")
    args = parser.parse_args(argv)
    from cryospire_core.pipeline.runfolder import RunFolder

    if not RunFolder(args.run).config_path.is_file():
        print(f"{args.run}: run folder: expected a folder with config.json, found none", file=sys.stderr)
        return 1
    return open_run(args.run, args.screenshot)


if __name__ == "__main__":
    sys.exit(main())
