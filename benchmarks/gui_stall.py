"""Event-loop stalls of napari while the train dock trains.

Simulates a small hinge data set, opens a viewer with the train dock, trains every stage in the
dock's worker thread and records, with a 10 ms QTimer, the gaps between timer ticks: the
longest gap is the longest time the GUI could not react. Also times the dock's own GUI-thread
callbacks, to tell their cost from the training thread's (GIL, CPU) interference.

    xvfb-run -a .venv/bin/python benchmarks/gui_stall.py [--n 1000] [--epochs 2] [--torch-threads N]

--torch-threads 0 leaves torch's default (one thread per core) in the training thread; without
the option the dock's default applies (one core fewer than the machine has).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images (32 px)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per stage")
    parser.add_argument("--torch-threads", type=int, default=-1,
                        help="training thread's torch threads (0: torch's default; -1: the dock's default)")
    parser.add_argument("--screenshot", help="save a screenshot of the viewer at the end")
    args = parser.parse_args()

    import napari
    from qtpy.QtCore import QTimer

    from cryospire_core.pipeline.config import TrainConfig
    from cryospire_core.sim.simulate import simulate, write_simulation
    from cryospire_napari import _parts_widget, _train_widget

    tmp = Path(tempfile.mkdtemp(prefix="gui_stall_"))
    write_simulation(tmp / "data", simulate("hinge", 32, args.n, snr=10.0, seed=1))
    cfg = TrainConfig.for_profile("cpu")
    rep = dataclasses.replace
    cfg.consensus = rep(cfg.consensus, epochs=args.epochs, map_fit_steps=50, n_gaussians=256)
    cfg.discovery = rep(cfg.discovery, epochs=args.epochs, n_gaussians=256)
    cfg.hierarchical = rep(cfg.hierarchical, epochs=args.epochs, n_gaussians=512, hidden=64, depth=2)

    # Time every GUI-thread callback of the docks.
    costs: dict[str, list[float]] = defaultdict(list)
    spans: list[tuple[float, float, str]] = []

    def timed(cls, name):
        original = getattr(cls, name)

        @functools.wraps(original)
        def wrapper(self, *a, **kw):
            t = time.perf_counter()
            try:
                return original(self, *a, **kw)
            finally:
                costs[f"{cls.__name__}.{name}"].append(1000 * (time.perf_counter() - t))
                spans.append((t, time.perf_counter(), f"{cls.__name__}.{name}"))

        setattr(cls, name, wrapper)

    for name in ("_poll", "refresh_layers", "_show_preview", "_finished"):
        timed(_train_widget.TrainWidget, name)
    timed(_train_widget.LossPlot, "redraw")
    timed(_parts_widget.PartsWidget, "_show")

    viewer = napari.Viewer()
    dock = _train_widget.TrainWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Train")
    dock.config = cfg
    if args.torch_threads >= 0:
        dock.torch_threads = args.torch_threads or None
    dock.particles.edit.setText(str(tmp / "data" / "particles.star"))
    dock.out.edit.setText(str(tmp / "run"))

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    app = napari.qt.get_qapp()
    settle = time.perf_counter() + 2.0  # the window's first paint is not part of training
    while time.perf_counter() < settle:
        app.processEvents()
        time.sleep(0.01)
    timer.start()
    t0 = time.perf_counter()
    dock.start()
    while dock.running or dock.parts.busy or dock.preview_job.busy:
        app.processEvents()
        time.sleep(0.002)
    elapsed = time.perf_counter() - t0
    timer.stop()
    gaps = 1000 * np.diff(ticks)
    print(f"{args.n} images, {args.epochs} epochs/stage, torch threads in the worker: "
          f"{dock.torch_threads or 'torch default'}; status {dock.last_status}; training {elapsed:.1f} s")
    print(f"timer gaps (ms): longest {gaps.max():.0f}, 99th percentile {np.percentile(gaps, 99):.0f}, "
          f"median {np.median(gaps):.1f}; gaps > 100 ms: {int((gaps > 100).sum())} of {len(gaps)}")
    for name, values in sorted(costs.items()):
        print(f"  {name}: {len(values)} calls, longest {max(values):.0f} ms, total {sum(values):.0f} ms")
    print("the 5 longest gaps and the dock callbacks inside them:")
    for i in np.argsort(gaps)[::-1][:5]:
        a, b = ticks[i], ticks[i + 1]
        inside = [f"{n} {1000 * (e - s):.0f} ms" for s, e, n in spans if s < b and e > a]
        print(f"  {gaps[i]:.0f} ms at t = {a - t0:.2f} s: {', '.join(inside) or 'none (drawing, GIL or CPU)'}")
    if args.screenshot:
        viewer.screenshot(args.screenshot, canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    main()
