"""The longest time napari cannot react while a biologist uses the plugin's docks.

Opens a copy of a finished run (``--run``, e.g. the folder ``cryospire demo`` trains) in a
napari window with the Parts and Latent explorer docks docked, then does what a user does, one
action after the other: open the run, drag the cursor across the scatter, play a traversal,
colour the scatter by presence and by displacement, compute UMAP (``--umap``), merge and split
parts, export the traversal as an MRC series and as a movie. A 20 ms heartbeat timer runs on the
GUI thread throughout; the gap between two heartbeats is how long the window was frozen. Each
action's row gives the longest gap, the 99th-percentile gap and how long the action took
(until its result is on screen). ::

    cryospire demo --out DEMO --viewer none
    xvfb-run -a python benchmarks/gui_gap.py --run DEMO/run --ndisplay 2 [--label after] [--out FILE]

The run is copied first (part edits write to it). Under ``xvfb-run`` napari draws with software
OpenGL, which makes every redraw (3D most of all) slower than on a workstation's GPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HEARTBEAT_MS = 20
TARGET_MS = 100


class Heartbeat:
    """Times of a QTimer's ticks on the GUI thread (``HEARTBEAT_MS`` apart when nothing blocks)."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(HEARTBEAT_MS)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start()

    def stalled_ms(self) -> float:
        return 1000 * (time.perf_counter() - self.ticks[-1]) if self.ticks else 0.0

    def gaps_since(self, i: int) -> np.ndarray:
        """Gaps (ms) between the ticks from index ``i`` on."""
        return 1000 * np.diff(self.ticks[i:])


class StallSampler:
    """``--diagnose``: a thread that, while the heartbeat is late by more than ``TARGET_MS``,
    samples where the GUI thread is (its innermost Python frames) every 25 ms; the GUI thread
    releases the GIL while Qt paints or OpenGL draws, so the sample says which Python call
    started the stall."""

    def __init__(self, beat: Heartbeat) -> None:
        import collections
        import sys
        import threading
        import traceback

        self.beat, self.action = beat, ""
        self.samples: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        main = threading.main_thread().ident

        def sample() -> None:
            while True:
                time.sleep(0.025)
                if self.beat.stalled_ms() > TARGET_MS and self.action:
                    frame = sys._current_frames().get(main)
                    stack = traceback.extract_stack(frame)[-40:] if frame is not None else []
                    ours = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in stack
                            if "site-packages" not in f.filename or "napari" in f.filename or "vispy" in f.filename
                            or "matplotlib" in f.filename]
                    self.samples[self.action][" < ".join(reversed(ours[-4:]))] += 1

        threading.Thread(target=sample, daemon=True).start()

    def report(self) -> str:
        lines = ["where the GUI thread was while the heartbeat was late (25 ms samples):"]
        for action, counter in self.samples.items():
            lines.append(f"  {action}:")
            lines += [f"    {n * 25:6d} ms  {where}" for where, n in counter.most_common(4)]
        return "\n".join(lines)


def spin(until: Callable[[], bool], timeout: float) -> bool:
    """Turn the event loop (the heartbeat keeps ticking) until ``until()`` or ``timeout`` s."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    deadline = time.perf_counter() + timeout
    check = QTimer()
    check.setInterval(5)
    check.timeout.connect(lambda: (until() or time.perf_counter() > deadline) and loop.quit())
    check.start()
    loop.exec()
    check.stop()
    return until()


def measure(beat: Heartbeat, action: Callable[[], object], done: Callable[[], bool],
            timeout: float = 600.0) -> tuple[float, float, float, bool]:
    """Start ``action`` from inside the event loop and wait for ``done()``: (longest gap ms,
    99th-percentile gap ms, duration s, finished)."""
    from qtpy.QtCore import QTimer

    spin(lambda: False, 0.3)  # quiet ticks before
    started: list[float] = []
    first = len(beat.ticks)

    def go() -> None:
        started.append(time.perf_counter())
        action()

    QTimer.singleShot(0, go)
    finished = spin(lambda: bool(started) and done(), timeout)
    end = time.perf_counter()
    spin(lambda: False, 0.1)  # the tick that ends the last gap
    gaps = beat.gaps_since(first)
    return float(gaps.max()), float(np.percentile(gaps, 99)), end - started[0], finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run folder (copied first)")
    parser.add_argument("--ndisplay", type=int, choices=(2, 3), default=2, help="napari's 2D or 3D view")
    parser.add_argument("--drag-s", type=float, default=4.0, help="seconds of cursor drag and of play")
    parser.add_argument("--umap", action="store_true", help="also time the UMAP embedding (minutes on 2 cores)")
    parser.add_argument("--label", default="", help="a name for this table (e.g. before / after)")
    parser.add_argument("--out", type=Path, help="append the table to this file")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the GUI thread to this file")
    parser.add_argument("--diagnose", action="store_true", help="sample where the GUI thread stalls")
    args = parser.parse_args()

    import napari
    from qtpy.QtCore import QTimer

    from cryospire_napari._explorer_widget import (
        COLOUR_LABELS,
        MAP_NAME,
        ExplorerWidget,
        MouseMode,
    )
    from cryospire_napari._parts_widget import PartsWidget

    work = Path(tempfile.mkdtemp(prefix="gui_gap_"))
    run = work / args.run.name
    shutil.copytree(args.run, run)

    viewer = napari.Viewer()
    viewer.window._qt_window.resize(1500, 950)
    parts = PartsWidget(viewer)
    explorer = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(parts, name="Parts", area="right")
    viewer.window.add_dock_widget(explorer, name="Latent explorer", area="right")
    beat = Heartbeat()
    sampler = StallSampler(beat) if args.diagnose else None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    spin(lambda: False, 2.0)  # the window's first paint is not timed
    rows: list[tuple[str, tuple[float, float, float, bool]]] = []

    def row(name: str, action: Callable[[], object], done: Callable[[], bool]) -> None:
        if sampler is not None:
            sampler.action = name
        rows.append((name, measure(beat, action, done)))
        gap, p99, took, ok = rows[-1][1]
        print(f"{name:<26} longest gap {gap:7.0f} ms, p99 {p99:6.0f} ms, {took:6.1f} s{'' if ok else ' (timed out)'}",
              flush=True)

    def docks_idle() -> bool:
        return not parts.busy and not explorer.busy

    def set_ndisplay() -> None:
        viewer.dims.ndisplay = args.ndisplay

    row("open the run", lambda: (viewer.open(run / "config.json", plugin="cryospire-napari"), set_ndisplay()),
        lambda: explorer.session.explorer is not None and parts.state is not None and docks_idle()
        and MAP_NAME in viewer.layers)

    # Drag the cursor in a circle over the scatter, one mouse event every 16 ms.
    explorer.mode.setCurrentIndex(list(MouseMode).index(MouseMode.CURSOR))
    w, h = explorer.scatter.canvas.size
    path = [(w / 2 + 0.3 * w * np.cos(t), h / 2 + 0.3 * h * np.sin(t))
            for t in np.linspace(0, 2 * np.pi, max(2, int(1000 * args.drag_s / 16)))]
    mover = QTimer()
    mover.setInterval(16)
    steps = iter(path)

    def move() -> None:
        p = next(steps, None)
        if p is None:
            mover.stop()
            explorer.release(np.array(path[-1]))
        else:
            explorer.move(np.array(p))

    mover.timeout.connect(move)
    shown = explorer.frames_shown
    row("drag the cursor", lambda: (explorer.press(np.array(path[0])), mover.start()),
        lambda: not mover.isActive() and docks_idle())
    print(f"  frames shown during the drag: {explorer.frames_shown - shown} for {len(path)} mouse moves")

    explorer.trav_steps.setValue(20)
    row("compute a traversal", explorer.compute_traversal,
        lambda: explorer.session.traversal is not None and docks_idle())
    play_end = []
    row("play the traversal", lambda: (explorer.play_button.setChecked(True),
                                       QTimer.singleShot(int(1000 * args.drag_s), lambda: (
                                           explorer.play_button.setChecked(False), play_end.append(1)))),
        lambda: bool(play_end) and docks_idle())

    for mode in (m for m in COLOUR_LABELS if COLOUR_LABELS[m] in ("presence", "displacement")):
        before = explorer.colours
        row(f"colour by {COLOUR_LABELS[mode]}",
            lambda mode=mode: explorer.colour_by.setCurrentIndex(explorer.colour_by.findData(mode)),
            lambda before=before: explorer.colours is not before and docks_idle())
    if args.umap:
        from cryospire_core.analysis.explorer import EmbeddingMethod

        row("UMAP embedding", lambda: explorer.method.setCurrentIndex(explorer.method.findData(EmbeddingMethod.UMAP)),
            lambda: explorer.session.embedding is not None
            and explorer.session.embedding.method == EmbeddingMethod.UMAP and docks_idle())

    n_parts = parts.state.n_parts
    row("merge two parts", lambda: parts.merge(0, 1), lambda: parts.state.n_parts == n_parts - 1 and docks_idle())
    row("split a part in two", lambda: parts.split(0, 2), lambda: parts.state.n_parts == n_parts and docks_idle())

    row("export an MRC series", lambda: explorer.actions.export_series(work / "series"),
        lambda: (work / "series" / "vol_019.mrc").exists() and docks_idle())
    movie = work / "traversal.gif"
    row("export a GIF movie", lambda: explorer.actions.export_movie(movie),
        lambda: movie.exists() and docks_idle())

    title = (f"GUI gaps{f' ({args.label})' if args.label else ''}: napari {napari.__version__}, "
             f"{viewer.dims.ndisplay}D, {platform.node()}, {os.cpu_count()} cores, "
             f"heartbeat {HEARTBEAT_MS} ms, load average {os.getloadavg()[0]:.1f}, run {args.run}")
    table = [title, f"{'action':<26} {'longest gap ms':>15} {'p99 gap ms':>11} {'took s':>7} {'< 100 ms':>9}"]
    for name, (gap, p99, took, ok) in rows:
        table.append(f"{name:<26} {gap:15.0f} {p99:11.0f} {took:7.1f} {'yes' if gap < TARGET_MS else 'NO':>9}"
                     f"{'' if ok else '  (timed out)'}")
    if args.profile:
        profiler.disable()
        profiler.dump_stats(args.profile)
    print("\n".join(table))
    if sampler is not None:
        print(sampler.report())
    if args.out:
        with args.out.open("a") as f:
            f.write("\n".join(table) + "\n\n")
    viewer.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
