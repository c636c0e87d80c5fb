"""The latent explorer's scatter: a vispy scene of the particles in 2D (markers, a density
image under them), the cursor, the traversal ends, the lasso and the traversal path. Drawing
only: the dock decides what to draw (:mod:`._explorer_widget`)."""

from __future__ import annotations

from enum import Enum

import numpy as np

from cryospire_core.analysis.colourkey import ColourKey

from ._parts_widget import part_colours
from ._theme import PLOT_COLOURS

#: Bins per axis of the density image.
DENSITY_BINS = 256


class ScatterView(Enum):
    """How the particles are drawn: as points, as a density image, or both (points on top)."""

    POINTS = "points"
    DENSITY = "density"
    BOTH = "both"


#: The colormap of continuous colourings and of the density image.
COLORMAP = "viridis"


def colormap_rgba(t: np.ndarray) -> np.ndarray:
    """(N, 4) float32 RGBA of :data:`COLORMAP` at positions t (N,) in [0, 1] (vispy's, no
    matplotlib import)."""
    from vispy.color import get_colormap

    return np.asarray(get_colormap(COLORMAP).map(np.asarray(t, np.float64)), np.float32)


def point_colours(values: np.ndarray, key: ColourKey) -> np.ndarray:
    """(N, 4) float32 RGBA for per-particle values (N,) as ``key`` reads them: category v in
    colour v of the part palette, or the colormap from ``key.lo`` to ``key.hi``."""
    if key.categorical:
        return part_colours(len(key.categories))[values.astype(np.int64)].astype(np.float32)
    return colormap_rgba(key.scaled(values))


class ScatterCanvas:
    """The vispy scene of the scatter: points, density, cursor, lasso, path (no Qt logic)."""

    def __init__(self) -> None:
        from vispy import scene

        self.canvas = scene.SceneCanvas(keys=None, size=(420, 380), bgcolor=PLOT_COLOURS["figure"])
        self.view = self.canvas.central_widget.add_view()
        self.view.camera = scene.PanZoomCamera(aspect=1)
        self.density = scene.visuals.Image(np.zeros((2, 2), np.float32), cmap=COLORMAP, parent=self.view.scene)
        self.density.visible = False
        self.markers = scene.visuals.Markers(parent=self.view.scene)
        self.path = scene.visuals.Line(np.zeros((2, 2)), color="white", width=2, parent=self.view.scene)
        self.path.visible = False
        self.lasso = scene.visuals.Line(np.zeros((2, 2)), color="yellow", width=2, parent=self.view.scene)
        self.lasso.visible = False
        self.ends = scene.visuals.Markers(parent=self.view.scene)
        self.cursor = scene.visuals.Markers(parent=self.view.scene)
        for v, z in ((self.density, 0), (self.markers, 1), (self.path, 2), (self.lasso, 3), (self.ends, 4), (self.cursor, 5)):
            v.order = z  # drawn in this order, each over the previous: no depth test in a 2D plot
            v.set_gl_state("translucent", depth_test=False)
        self.points = np.zeros((0, 2), np.float32)
        self.density_max = 0  # particles in the fullest bin of the density image

    def set_points(self, points: np.ndarray, colours: np.ndarray, selected: np.ndarray | None) -> None:
        """Draw points (N, 2) with colours (N, 4); selected (N,) bool are drawn larger, white-edged."""
        self.points = points
        size = np.full(len(points), 5.0 if len(points) < 20_000 else 3.0, np.float32)
        colours = colours.copy()
        if selected is not None and selected.any():
            size[selected] += 3
            colours[~selected, 3] = 0.35  # the selection stands out, the rest fades
        self.markers.set_data(points, face_color=colours, edge_width=0, size=size)

    def set_density(self, points: np.ndarray) -> None:
        """A log-scaled 2D histogram of points (N, 2) as an image under the markers."""
        from vispy.visuals.transforms import STTransform

        lo, hi = points.min(0), points.max(0)
        span = np.where(hi > lo, hi - lo, 1.0)
        h, _, _ = np.histogram2d(points[:, 1], points[:, 0], bins=DENSITY_BINS,
                                 range=[[lo[1], lo[1] + span[1]], [lo[0], lo[0] + span[0]]])
        img = np.log1p(h).astype(np.float32)
        self.density_max = int(h.max()) if h.size else 0
        self.density.set_data(img)
        self.density.clim = (0.0, float(img.max()) or 1.0)
        self.density.transform = STTransform(scale=(span[0] / DENSITY_BINS, span[1] / DENSITY_BINS), translate=(lo[0], lo[1]))

    def set_view(self, view: ScatterView) -> None:
        """Show the markers, the density image, or both."""
        self.markers.visible = view in (ScatterView.POINTS, ScatterView.BOTH)
        self.density.visible = view in (ScatterView.DENSITY, ScatterView.BOTH)
        self.canvas.update()

    def fit(self) -> None:
        if len(self.points):
            lo, hi = self.points.min(0), self.points.max(0)
            pad = 0.05 * (hi - lo).max()
            self.view.camera.rect = (lo[0] - pad, lo[1] - pad, hi[0] - lo[0] + 2 * pad, hi[1] - lo[1] + 2 * pad)

    def to_data(self, pos) -> np.ndarray:
        """Canvas pixel position (x, y) -> embedding coordinates (2,)."""
        tr = self.canvas.scene.node_transform(self.view.scene)
        return np.asarray(tr.map(np.asarray(pos, np.float64)[:2]))[:2]

    def to_canvas(self, xy) -> np.ndarray:
        """Embedding coordinates (2,) -> canvas pixel position (x, y)."""
        tr = self.view.scene.node_transform(self.canvas.scene)
        return np.asarray(tr.map(np.asarray(xy, np.float64)[:2]))[:2]

    def set_cursor(self, xy) -> None:
        self.cursor.set_data(np.asarray(xy, np.float32).reshape(1, 2), face_color="red", edge_color="white", size=12)

    def set_ends(self, a, b) -> None:
        """Draw the traversal ends a and b (2,) (None: that end is not set)."""
        pts = [p for p in (a, b) if p is not None]
        self.ends.visible = bool(pts)
        if pts:
            self.ends.set_data(np.asarray(pts, np.float32), face_color="orange", edge_color="black", size=10, symbol="square")

    def show_line(self, line, xy: np.ndarray | None) -> None:
        if xy is None or len(xy) < 2:
            line.visible = False
        else:
            line.set_data(np.asarray(xy, np.float32))
            line.visible = True
