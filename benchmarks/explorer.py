"""Latency of the latent explorer: from a latent to the map displayed in napari.

Synthetic rows (the default): for a PartAwareModel of 8,192 Gaussians with the paper's MLP sizes
(3 hidden layers of 128, features of 24, 8 parts; random weights: timing does not depend on
them) trained at each of ``--boxes`` (64^3 and 128^3), maps at its own box:

- decode + rasterise: :meth:`cryospire_core.analysis.explorer.Explorer.frame` (no readout, no labels);
- layer update: ``layer.data = volume`` on the napari Image layer plus the repaint of the
  viewer's canvas (3D, iso-surface, ChimeraX view), with the event loop turned until it is done;
- total: both, one after the other on the GUI thread (in the dock the first part runs in a
  worker thread, so the viewer stays responsive meanwhile).

Also times one redraw of the explorer's scatter canvas with 1,000,000 points (vispy Markers,
after a pan), the number that decides whether the scatter pans smoothly.

A run at real sizes (``--run RUN``: a finished run folder, stage 2 or else stage 1, opened as
the explorer dock opens it; or ``--synthetic-particles N``: the synthetic paper-size model
trained at 128 px with N random latents, labelled synthetic in the table), at each of
``--map-boxes`` (64, 128, 256: the dock's map box, whatever box the model was trained at):

- open: what the dock computes before it shows the run (the model and latents, the k-means
  states of the first colouring, the PCA embedding; UMAP only on request) and the scatter's
  first draw of the N points (markers and density image);
- decode + rasterise, layer update and total, as above, with the map on the chosen map box;
- cursor move: the session's latent at a new scatter position, the cursor marker moved and the
  scatter canvas (N points as markers) redrawn: the GUI thread's share of a drag (the map
  itself is rendered in the dock's worker, the rows above).

Run under a display (``xvfb-run -a``; software OpenGL there): ::

    xvfb-run -a python benchmarks/explorer.py [--repeats 40] [--threads 2] [--out benchmarks/results/explorer.txt]
    xvfb-run -a python benchmarks/explorer.py --run RUN --threads 1 --boxes --scatter-points 0
    xvfb-run -a python benchmarks/explorer.py --synthetic-particles 100000 --threads 1 --boxes --scatter-points 0
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

#: p50 targets (ms) of latent -> displayed map on 2 cores; 256^3 is a goal.
TARGETS_MS = {64: 30.0, 128: 100.0, 256: 300.0}

#: The trained box of the synthetic run of ``--synthetic-particles`` (the 100,000-particle run's).
SYNTHETIC_TRAINED_BOX = 128


def make_model(box: int, n_gaussians: int = 8192, n_parts: int = 8, seed: int = 0):
    """A stage-2 model of a random molecule: Gaussians of ~1.5 px in a ball of radius ~box/3 px."""
    from cryospire_core.imaging.lattice import Lattice
    from cryospire_core.models.hierarchical import HierarchicalConfig, PartAwareModel

    rng = np.random.default_rng(seed)
    apix = 384.0 / box
    cfg = HierarchicalConfig(n_gaussians=n_gaussians)  # the paper's stage 2 (the class defaults) at G
    r = box / 3 * apix * rng.random(n_gaussians) ** (1 / 3)
    v = rng.normal(size=(n_gaussians, 3))
    centres = v / np.linalg.norm(v, axis=1, keepdims=True) * r[:, None]
    widths = 1.5 * apix * rng.uniform(0.7, 1.3, n_gaussians)
    part = np.argmin(((centres[:, None] - centres[rng.choice(n_gaussians, n_parts, replace=False)][None]) ** 2).sum(-1), 1)
    anchors = np.stack([centres[part == k].mean(0) for k in range(n_parts)])
    model = PartAwareModel(centres, widths, rng.uniform(0.5, 1.0, n_gaussians), part, anchors,
                           rng.normal(size=(n_parts, cfg.feature_dim)), rng.normal(size=(1000, cfg.zdim)).astype(np.float32),
                           Lattice(box, apix), cfg)
    with torch.no_grad():  # the heads start at zero; small random weights make the motions real
        for mlp in (model.anchor_mlp, model.residual_mlp, model.presence_mlp):
            mlp.head.weight.normal_(0, 0.01)
    return model.eval()


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def time_box(viewer, box: int, repeats: int, draw_frames: bool, fp32: bool = False) -> dict[str, tuple[float, float]]:
    """The synthetic model trained at ``box``, maps at its own box."""
    from cryospire_core.analysis.explorer import Explorer

    model = make_model(box)
    e = Explorer(model, model.latents.embedding.weight.detach().numpy(), model.part_index.numpy())
    return time_frames(viewer, e, None, e.latents, repeats, draw_frames, fp32)


def time_frames(viewer, e, map_box: int | None, latents: np.ndarray, repeats: int, draw_frames: bool,
                fp32: bool = False) -> dict[str, tuple[float, float]]:
    """p50/p95 ms of latent -> displayed map for explorer ``e`` on map box ``map_box`` (None:
    the model's) at ``repeats`` latents drawn from the spread of ``latents`` (after 3 warm-up
    frames)."""
    from qtpy.QtWidgets import QApplication

    from cryospire_napari._layers import map_layer, set_chimerax_view

    app = QApplication.instance()
    if fp32:
        e._bf16_faster = False  # what a CPU without fast bfloat16 gets
    rng = np.random.default_rng(1)
    lat = np.asarray(latents, np.float32)
    zs = (lat.mean(0) + rng.normal(size=(repeats + 3, e.zdim)) * lat.std(0)).astype(np.float32)
    lattice = e.map_lattice(map_box)
    data, kwargs, _ = map_layer(e.map_at(zs[0], map_box), lattice.apix, f"map {lattice.box}")
    layer = viewer.add_image(data, **kwargs)
    set_chimerax_view(viewer)
    app.processEvents()
    compute, update, draw, total = [], [], [], []

    def clock() -> np.ndarray:  # wall and this thread's CPU time (torch runs here with 1 thread)
        return np.array([time.perf_counter(), time.thread_time()])

    for i, z in enumerate(zs):
        t0 = clock()
        vol = e.frame(z, labels=False, readout=False, live=True, box=map_box).volume
        t1 = clock()
        layer.data = vol  # napari: events, slicing, the new data handed to the vispy visual
        t2 = clock()
        if draw_frames:
            viewer.window._qt_viewer.canvas.native.repaint()  # the OpenGL draw itself, synchronously
            app.processEvents()
        t3 = clock()
        if i >= 3:  # warm-up frames (first texture upload, lazy imports)
            compute.append(1e3 * (t1 - t0))
            update.append(1e3 * (t2 - t1))
            draw.append(1e3 * (t3 - t2))
            total.append(1e3 * (t2 - t0))
    viewer.layers.remove(layer)
    rows = {f"decode ({e.live_precision()}) + rasterise": compute, "layer data update": update, "total": total}
    if draw_frames:
        rows["OpenGL draw (extra)"] = draw
    return {stage: wall_and_cpu(ms) for stage, ms in rows.items()}


def wall_and_cpu(ms: list[np.ndarray]) -> tuple[float, float, float]:
    """(wall p50, wall p95, CPU p50) ms of (wall, CPU) pairs. The CPU time of the timing thread
    is what the wall time would be on idle cores (with 1 torch thread): on a machine shared with
    other jobs the wall time is longer by the time the OS ran them instead."""
    x = np.array(ms)
    return (*percentiles(list(x[:, 0])), float(np.percentile(x[:, 1], 50)))


def synthetic_explorer(n: int, seed: int = 0):
    """An Explorer over the synthetic paper-size model trained at :data:`SYNTHETIC_TRAINED_BOX`
    with ``n`` random latents (normal, zdim of the model): a run-shaped stand-in for an
    n-particle run."""
    from cryospire_core.analysis.explorer import Explorer

    model = make_model(SYNTHETIC_TRAINED_BOX)
    latents = np.random.default_rng(seed).normal(size=(n, model.cfg.zdim)).astype(np.float32)
    return Explorer(model, latents, model.part_index.numpy())


def open_run(run: Path | None, synthetic_particles: int, k: int = 8):
    """Open a run as the explorer dock does (its loading worker, then the scatter's first draw on
    the GUI thread): returns (session, scatter canvas, {step: ms}). ``run`` None: the synthetic
    run of ``synthetic_particles`` particles (the model is built, not timed)."""
    from qtpy.QtWidgets import QApplication

    from cryospire_core.analysis.colourkey import colour_key
    from cryospire_core.analysis.explorer import ColourMode, EmbeddingMethod, Explorer
    from cryospire_core.analysis.session import ExplorerSession
    from cryospire_napari._scatter import ScatterCanvas, point_colours

    ms: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        ms[name] = 1e3 * (time.perf_counter() - t0)
        return out

    e = timed("model and latents (Explorer.from_run)", lambda: Explorer.from_run(run)) if run is not None \
        else synthetic_explorer(synthetic_particles)
    timed(f"k-means, {k} states (first colouring)", lambda: e.states(k))
    emb = timed("PCA embedding", lambda: e.embedding(EmbeddingMethod.PCA))
    session = ExplorerSession()
    session.load(e, emb)
    scatter = ScatterCanvas()
    scatter.canvas.size = (500, 400)
    scatter.canvas.show()  # a window of its own, drawn by Qt as the dock's is

    def first_draw():
        states = e.states(k).astype(np.float32)
        scatter.set_points(emb.points, point_colours(states, colour_key(ColourMode.STATE, states)), None)
        scatter.set_density(emb.points)
        scatter.fit()
        scatter.set_cursor(session.cursor.xy)
        scatter.canvas.native.repaint()  # the OpenGL draw, synchronously
        QApplication.instance().processEvents()

    timed(f"scatter: {e.n_particles:,} points, first draw", first_draw)
    ms["total"] = sum(ms.values())
    return session, scatter, ms


def time_cursor(session, scatter, repeats: int, markers: bool) -> tuple[float, float]:
    """p50/p95 ms of a cursor move on the GUI thread: the session's latent at a new scatter
    position (its event), the cursor marker moved and the scatter redrawn, its points as
    markers or as the density image (``markers`` False: the dock's view above 200,000). The map
    it asks for is rendered in the dock's worker (:func:`time_frames`)."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    scatter.markers.visible = markers
    scatter.density.visible = not markers
    pts = session.embedding.points
    lo, hi = np.percentile(pts, [10, 90], axis=0)
    path = lo + np.linspace(0, 1, repeats + 3)[:, None] * (hi - lo)
    ms = []
    for i, xy in enumerate(path):
        t0 = time.perf_counter()
        session.move_cursor(xy)
        scatter.set_cursor(session.cursor.xy)
        scatter.canvas.native.repaint()
        app.processEvents()
        if i >= 3:
            ms.append(1e3 * (time.perf_counter() - t0))
    return percentiles(ms)


def run_rows(viewer, args) -> list[str]:
    """The table of a run at real sizes (``--run`` or ``--synthetic-particles``)."""
    session, scatter, open_ms = open_run(args.run, args.synthetic_particles)
    e = session.explorer
    what = (f"run {args.run} ({e.stage}, trained at {e.lattice.box} px)" if args.run is not None else
            f"SYNTHETIC run: paper-size model (8,192 Gaussians) trained at {e.lattice.box} px, random latents")
    lines = [f"# {what}: {e.n_particles:,} particles, {e.zdim}-D latents, {e.n_parts} parts",
             f"{'open':>5} {'step':<45} {'ms':>8}"]
    lines += [f"{'':>5} {step:<45} {ms:8.0f}" for step, ms in open_ms.items()]
    print("\n".join(lines), flush=True)
    lines.append(HEADER.replace("  box", "  map"))
    for box in args.map_boxes:
        rows = time_frames(viewer, e, box, e.latents, args.repeats, args.draw, args.fp32)
        lines += table_rows(box, rows)
        print("\n".join(lines[-len(rows):]), flush=True)
    for markers in (True, False):
        p50, p95 = time_cursor(session, scatter, args.repeats, markers)
        lines.append(f"cursor move, {e.n_particles:,} points as {'markers' if markers else 'density image'} "
                     f"(latent, cursor, scatter redraw): p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    scatter.canvas.close()
    return lines


HEADER = (f"{'box':>5} {'stage':<31} {'p50 ms':>8} {'p95 ms':>8} {'p50 CPU ms':>11} {'target p50':>11} "
          f"{'p50/target':>11} {'CPU/target':>11}")


def table_rows(box: int, rows: dict[str, tuple[float, float, float]]) -> list[str]:
    out = []
    for stage, (p50, p95, cpu) in rows.items():
        target = f"{TARGETS_MS[box]:.0f}" if stage == "total" and box in TARGETS_MS else ""
        ratio = f"{p50 / TARGETS_MS[box]:.2f}" if target else ""
        cpu_ratio = f"{cpu / TARGETS_MS[box]:.2f}" if target else ""
        out.append(f"{box:>5} {stage:<31} {p50:8.1f} {p95:8.1f} {cpu:11.1f} {target:>11} {ratio:>11} {cpu_ratio:>11}")
    return out


def time_scatter(n: int, repeats: int, markers: bool) -> tuple[float, float]:
    """Redraw of the scatter canvas with n points after a pan (canvas.render(): draw + read back),
    with the points drawn as markers, or as the density image alone (``markers`` False)."""
    from cryospire_core.analysis.colourkey import colour_key
    from cryospire_core.analysis.explorer import ColourMode
    from cryospire_napari._scatter import ScatterCanvas, point_colours

    rng = np.random.default_rng(0)
    pts = rng.normal(size=(n, 2)).astype(np.float32)
    s = ScatterCanvas()
    s.set_points(pts, point_colours(pts[:, 0], colour_key(ColourMode.DISPLACEMENT, pts[:, 0])), None)
    s.set_density(pts)
    s.fit()
    s.markers.visible = markers
    s.density.visible = not markers
    s.canvas.render()
    ms = []
    for i in range(repeats):
        x, y, w, h = s.view.camera.rect.pos + s.view.camera.rect.size
        s.view.camera.rect = (x + 0.01 * w, y, w, h)
        t0 = time.perf_counter()
        s.canvas.render()
        ms.append(1e3 * (time.perf_counter() - t0))
    s.canvas.close()
    return percentiles(ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    parser.add_argument("--boxes", type=int, nargs="*", default=[64, 128],
                        help="synthetic models trained at these boxes, maps at their own (none: skip)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run", type=Path, help="a finished run folder (stage 2, else stage 1), opened as the dock does")
    which.add_argument("--synthetic-particles", type=int, default=0,
                       help="a synthetic run of this many particles (the paper-size model, random latents)")
    parser.add_argument("--map-boxes", type=int, nargs="*", default=[64, 128, 256],
                        help="map boxes for --run / --synthetic-particles")
    parser.add_argument("--scatter-points", type=int, default=1_000_000, help="0: skip the scatter timing")
    parser.add_argument("--draw", action="store_true", help="also time the canvas repaint after each update "
                        "(software OpenGL under Xvfb: seconds per frame, not representative of a GPU)")
    parser.add_argument("--fp32", action="store_true", help="decode in float32 even where bfloat16 is faster")
    parser.add_argument("--out", type=Path, help="also append the table to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1200, 900)
    lines = [f"# benchmarks/explorer.py {' '.join(argv if argv is not None else sys.argv[1:])}",
             f"# latent -> displayed map, {args.repeats} latents per box",
             (f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
              f"{args.threads} torch threads, load average at start {os.getloadavg()[0]:.2f}")]
    if args.boxes:
        lines += ["# synthetic model, 8,192 Gaussians, paper-size MLPs, maps at the box it was trained at", HEADER]
    for box in args.boxes:
        rows = time_box(viewer, box, args.repeats, args.draw, args.fp32)
        lines += table_rows(box, rows)
        print("\n".join(lines[-len(rows):]), flush=True)
    if args.run is not None or args.synthetic_particles:
        lines += run_rows(viewer, args)
    viewer.close()
    if args.scatter_points:
        for markers in (True, False):
            p50, p95 = time_scatter(args.scatter_points, 10, markers)
            lines.append(f"scatter redraw after a pan, {args.scatter_points:,} points as "
                         f"{'markers' if markers else 'density image'}: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    lines.append(f"# load average at end {os.getloadavg()[0]:.2f}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:  # a results file collects runs, each headed by its command line
            f.write("\n" + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
