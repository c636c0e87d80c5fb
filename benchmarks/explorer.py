"""Latency of the latent explorer: from a latent to the map displayed in napari.

For a PartAwareModel of 8,192 Gaussians with the paper's MLP sizes (3 hidden layers of 128,
features of 24, 8 parts; random weights: timing does not depend on them), at 64^3 and 128^3:

- decode + rasterise: :meth:`cryospire_core.analysis.explorer.Explorer.frame` (no readout, no labels);
- layer update: ``layer.data = volume`` on the napari Image layer plus the repaint of the
  viewer's canvas (3D, iso-surface, ChimeraX view), with the event loop turned until it is done;
- total: both, one after the other on the GUI thread (in the dock the first part runs in a
  worker thread, so the viewer stays responsive meanwhile).

Also times one redraw of the explorer's scatter canvas with 1,000,000 points (vispy Markers,
after a pan), the number that decides whether the scatter pans smoothly.

Run under a display (``xvfb-run -a``; software OpenGL there): ::

    xvfb-run -a python benchmarks/explorer.py [--repeats 40] [--threads 2] [--out benchmarks/results/explorer.txt]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

TARGETS_MS = {64: 30.0, 128: 100.0}


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
    from qtpy.QtWidgets import QApplication

    from cryospire_core.analysis.explorer import Explorer
    from cryospire_napari._layers import map_layer, set_chimerax_view

    app = QApplication.instance()
    model = make_model(box)
    e = Explorer(model, model.latents.embedding.weight.detach().numpy(), model.part_index.numpy())
    if fp32:
        e._bf16_faster = False  # what a CPU without fast bfloat16 gets
    rng = np.random.default_rng(1)
    zs = rng.normal(size=(repeats + 3, e.zdim)).astype(np.float32)
    data, kwargs, _ = map_layer(e.map_at(zs[0]), e.lattice.apix, f"map {box}")
    layer = viewer.add_image(data, **kwargs)
    set_chimerax_view(viewer)
    app.processEvents()
    compute, update, draw, total = [], [], [], []
    for i, z in enumerate(zs):
        t0 = time.perf_counter()
        vol = e.frame(z, labels=False, readout=False, live=True).volume
        t1 = time.perf_counter()
        layer.data = vol  # napari: events, slicing, the new data handed to the vispy visual
        t2 = time.perf_counter()
        if draw_frames:
            viewer.window._qt_viewer.canvas.native.repaint()  # the OpenGL draw itself, synchronously
            app.processEvents()
        t3 = time.perf_counter()
        if i >= 3:  # warm-up frames (first texture upload, lazy imports)
            compute.append(1e3 * (t1 - t0))
            update.append(1e3 * (t2 - t1))
            draw.append(1e3 * (t3 - t2))
            total.append(1e3 * (t2 - t0))
    viewer.layers.remove(layer)
    rows = {f"decode ({e.live_precision()}) + rasterise": percentiles(compute), "layer data update": percentiles(update),
            "total": percentiles(total)}
    if draw_frames:
        rows["OpenGL draw (extra)"] = percentiles(draw)
    return rows


def time_scatter(n: int, repeats: int, markers: bool) -> tuple[float, float]:
    """Redraw of the scatter canvas with n points after a pan (canvas.render(): draw + read back),
    with the points drawn as markers, or as the density image alone (``markers`` False)."""
    from cryospire_napari._scatter import ScatterCanvas, point_colours

    rng = np.random.default_rng(0)
    pts = rng.normal(size=(n, 2)).astype(np.float32)
    s = ScatterCanvas()
    s.set_points(pts, point_colours(pts[:, 0], False), None)
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
    parser.add_argument("--boxes", type=int, nargs="*", default=[64, 128])
    parser.add_argument("--scatter-points", type=int, default=1_000_000, help="0: skip the scatter timing")
    parser.add_argument("--draw", action="store_true", help="also time the canvas repaint after each update "
                        "(software OpenGL under Xvfb: seconds per frame, not representative of a GPU)")
    parser.add_argument("--fp32", action="store_true", help="decode in float32 even where bfloat16 is faster")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1200, 900)
    lines = [f"# benchmarks/explorer.py: latent -> displayed map, 8,192 Gaussians, paper-size MLPs, "
             f"{args.repeats} latents per box",
             f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{args.threads} torch threads, load average at start {os.getloadavg()[0]:.2f}",
             f"{'box':>5} {'stage':<31} {'p50 ms':>8} {'p95 ms':>8} {'target p50':>11} {'p50/target':>11}"]
    for box in args.boxes:
        rows = time_box(viewer, box, args.repeats, args.draw, args.fp32)
        for stage, (p50, p95) in rows.items():
            target = f"{TARGETS_MS[box]:.0f}" if stage == "total" else ""
            ratio = f"{p50 / TARGETS_MS[box]:.2f}" if stage == "total" else ""
            lines.append(f"{box:>5} {stage:<31} {p50:8.1f} {p95:8.1f} {target:>11} {ratio:>11}")
        print("\n".join(lines[-len(rows):]), flush=True)
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
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
