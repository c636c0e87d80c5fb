"""Make the plugin screenshots from the sample data, as a person would see them in napari.

Run from the repository under a display (``xvfb-run -a -s "-screen 0 1400x1000x24"
.venv/bin/python docs/screenshots/make_screenshots.py``); the sample data are made on first
use in the cache folder (``CRYOSPIRE_CACHE`` overrides it).
"""

from __future__ import annotations

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


def main() -> None:
    root = ensure_sample(DEFAULT_SPEC, with_run=True)

    viewer = viewer_with(root / "run", "cryospire: consensus run")
    set_chimerax_view(viewer)
    viewer.layers["consensus gaussians"].visible = False
    shoot(viewer, "run_consensus_map.png")
    viewer.layers["consensus gaussians"].visible = True
    shoot(viewer, "run_map_and_gaussians.png")
    viewer.close()

    viewer = viewer_with(root / "data" / "particles.star", "cryospire: particles")
    viewer.dims.set_point(0, 7)
    shoot(viewer, "particles_star.png")
    viewer.close()
    print(f"screenshots in {OUT}")


if __name__ == "__main__":
    main()
