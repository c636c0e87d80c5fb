"""The latent explorer dock: the particles' latents as a 2D scatter; a click or drag regenerates
the map at that point live; part readouts, traversals, selections and the round trip to training.

Layout (top to bottom): run row; scatter canvas (vispy: Markers for the points, an Image for the
density, a cursor, the lasso and the traversal path); view and colour controls; the part
readout table; traversal controls with a plot of the readout along it; selection controls.

Mouse modes on the scatter: ``cursor`` (left click or drag moves the cursor: 2D -> latent ->
map), ``lasso`` (left drag draws a polygon that selects the particles inside), ``pan/zoom``
(vispy's camera). The wheel zooms in every mode.

All model work runs in a :class:`~._workers.LatestJob` (one job running, at most one waiting,
newer requests replace the waiting one), so a drag never queues stale frames: a frame is
rendered for the newest cursor position each time the previous frame is done. Layers are
touched only in the job's callback on the GUI thread. Everything numeric lives in
:mod:`cryospire_core.analysis.explorer`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from napari.utils import notifications
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cryospire_core.analysis import explorer as core
from cryospire_core.errors import InputError
from cryospire_core.io.atomic import write_text
from cryospire_core.io.outputs import check_new_outputs

from ._layers import volume_translate
from ._notify import notify_error, status_text
from ._parts_widget import part_colours
from ._run_row import RunFolderRow
from ._workers import CloseWatcher, LatestJob, TrainJob, TrainRequest

MAP_NAME = "explorer map"
LABELS_NAME = "explorer parts"

#: Above this many particles the scatter starts in the density view.
DENSITY_ABOVE = 200_000

#: Bins per axis of the density image.
DENSITY_BINS = 256

MODES = ("cursor", "lasso", "pan/zoom")
TRAVERSALS = ("PC1", "PC2", "A to B (straight)", "A to B (through the data)")


def _colormap(values: np.ndarray, categorical: bool) -> np.ndarray:
    """(N, 4) float32 RGBA for per-particle values: the part palette for categories, viridis
    (from vispy, no matplotlib import) scaled to the 1st-99th percentile otherwise."""
    if categorical:
        v = values.astype(np.int64)
        return part_colours(int(v.max()) + 1)[v].astype(np.float32)
    from vispy.color import get_colormap

    lo, hi = np.percentile(values, [1, 99]) if len(values) else (0.0, 1.0)
    t = np.clip((values - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return np.asarray(get_colormap("viridis").map(t), np.float32)


class ScatterCanvas:
    """The vispy scene of the scatter: points, density, cursor, lasso, path (no Qt logic)."""

    def __init__(self) -> None:
        from vispy import scene

        self.canvas = scene.SceneCanvas(keys=None, size=(420, 380), bgcolor="#262930")
        self.view = self.canvas.central_widget.add_view()
        self.view.camera = scene.PanZoomCamera(aspect=1)
        self.density = scene.visuals.Image(np.zeros((2, 2), np.float32), cmap="viridis", parent=self.view.scene)
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
        self.density.set_data(img)
        self.density.clim = (0.0, float(img.max()) or 1.0)
        self.density.transform = STTransform(scale=(span[0] / DENSITY_BINS, span[1] / DENSITY_BINS), translate=(lo[0], lo[1]))

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
        pts = [p for p in (a, b) if p is not None]
        if pts:
            self.ends.set_data(np.asarray(pts, np.float32), face_color="orange", edge_color="black", size=10, symbol="square")

    def show_line(self, line, xy: np.ndarray | None) -> None:
        if xy is None or len(xy) < 2:
            line.visible = False
        else:
            line.set_data(np.asarray(xy, np.float32))
            line.visible = True


class ExplorerWidget(QWidget):
    """Dock: the latent explorer (see the module docstring)."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.explorer: core.Explorer | None = None
        self.embedding: core.Embedding | None = None
        self.colours: np.ndarray | None = None
        self.selected = np.zeros(0, bool)
        self.cursor_xy: np.ndarray | None = None
        self.ends: list[np.ndarray | None] = [None, None]
        self.traversal: np.ndarray | None = None
        self.traversal_readouts: list[core.PartReadout] = []
        self.last_frame: core.Frame | None = None
        self.frames_requested = 0
        self.frames_shown = 0
        self._lasso: list[np.ndarray] = []
        self._dragging = False
        self._play_step = -1
        self.job = LatestJob(self._job_failed)  # maps: latest wins
        self.side_job = LatestJob(self._job_failed)  # embeddings, colours, traversals, exports
        self.train_job: TrainJob | None = None

        run_row = RunFolderRow(self.load_run)
        self.run_edit = run_row.edit

        self.scatter = ScatterCanvas()
        self.scatter.canvas.events.mouse_press.connect(self._on_press)
        self.scatter.canvas.events.mouse_move.connect(self._on_move)
        self.scatter.canvas.events.mouse_release.connect(self._on_release)
        self.scatter.canvas.events.mouse_wheel.connect(self._on_wheel)
        self.scatter.canvas.native.setMinimumHeight(300)

        self.mode = QComboBox()
        self.mode.addItems(MODES)
        self.mode.currentTextChanged.connect(self._mode_changed)
        self.method = QComboBox()
        self.method.addItems(["pca", "umap"])
        self.method.currentTextChanged.connect(lambda m: self.compute_embedding(m))
        self.view_kind = QComboBox()
        self.view_kind.addItems(["points", "density", "both"])
        self.view_kind.currentTextChanged.connect(lambda _: self._apply_view())
        self.colour_by = QComboBox()
        self.colour_by.addItems(list(core.COLOUR_KINDS))
        self.colour_by.currentTextChanged.connect(lambda _: self.recolour())
        self.k_states = QSpinBox()
        self.k_states.setRange(2, 50)
        self.k_states.setValue(8)
        self.k_states.setPrefix("k ")
        self.k_states.valueChanged.connect(lambda _: self.recolour())
        self.part = QSpinBox()
        self.part.setRange(1, 1)
        self.part.setPrefix("part ")
        self.part.valueChanged.connect(lambda _: self.recolour())
        self.show_labels = QCheckBox("part-coloured map")
        self.show_labels.toggled.connect(lambda _: self._rerender())
        grid = QGridLayout()
        grid.addWidget(QLabel("mouse"), 0, 0)
        grid.addWidget(self.mode, 0, 1)
        grid.addWidget(QLabel("embedding"), 0, 2)
        grid.addWidget(self.method, 0, 3)
        grid.addWidget(QLabel("view"), 1, 0)
        grid.addWidget(self.view_kind, 1, 1)
        grid.addWidget(self.show_labels, 1, 2, 1, 2)
        grid.addWidget(QLabel("colour"), 2, 0)
        grid.addWidget(self.colour_by, 2, 1)
        grid.addWidget(self.k_states, 2, 2)
        grid.addWidget(self.part, 2, 3)

        self.readout = QTableWidget(0, 4)
        self.readout.setHorizontalHeaderLabels(["part", "angle (°)", "shift (Å)", "presence"])
        self.readout.verticalHeader().setVisible(False)
        self.readout.setMaximumHeight(150)

        self.trav_kind = QComboBox()
        self.trav_kind.addItems(list(TRAVERSALS))
        self.trav_steps = QSpinBox()
        self.trav_steps.setRange(2, 200)
        self.trav_steps.setValue(20)
        self.trav_steps.setSuffix(" steps")
        set_a, set_b = QPushButton("A = cursor"), QPushButton("B = cursor")
        set_a.clicked.connect(lambda: self.set_end(0))
        set_b.clicked.connect(lambda: self.set_end(1))
        self.trav_button = QPushButton("Traverse")
        self.trav_button.clicked.connect(self.compute_traversal)
        self.play_button = QPushButton("Play")
        self.play_button.setCheckable(True)
        self.play_button.toggled.connect(self.play)
        self.export_series_button = QPushButton("Export MRC series...")
        self.export_series_button.clicked.connect(self._export_series_dialog)
        self.export_movie_button = QPushButton("Export movie (GIF)...")
        self.export_movie_button.clicked.connect(self._export_movie_dialog)
        trav1, trav2, trav3 = QHBoxLayout(), QHBoxLayout(), QHBoxLayout()
        for w in (self.trav_kind, self.trav_steps):
            trav1.addWidget(w)
        for w in (set_a, set_b, self.trav_button, self.play_button):
            trav2.addWidget(w)
        for w in (self.export_series_button, self.export_movie_button):
            trav3.addWidget(w)
        self.plot = self._make_plot()

        self.sel_label = QLabel("no selection")
        self.sel_state = QSpinBox()
        self.sel_state.setRange(1, 50)
        self.sel_state.setPrefix("state ")
        sel_state_button = QPushButton("Select state")
        sel_state_button.clicked.connect(lambda: self.select_state(self.sel_state.value() - 1))
        clear = QPushButton("Clear")
        clear.clicked.connect(lambda: self.set_selection(np.zeros(len(self.selected), bool)))
        self.write_button = QPushButton("Write selection (.star/.cs)...")
        self.write_button.clicked.connect(self._write_dialog)
        self.continue_button = QPushButton("Continue training with this selection")
        self.continue_button.clicked.connect(self.continue_training)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        sel1, sel2 = QHBoxLayout(), QHBoxLayout()
        for w in (self.sel_state, sel_state_button, clear):
            sel1.addWidget(w)
        for w in (self.write_button,):
            sel2.addWidget(w)
        self.status = QLabel("no run loaded")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addWidget(run_row)
        layout.addWidget(self.scatter.canvas.native, 3)
        layout.addLayout(grid)
        layout.addWidget(self.readout)
        layout.addLayout(trav1)
        layout.addLayout(trav2)
        layout.addWidget(self.plot.canvas, 1)
        layout.addLayout(trav3)
        layout.addWidget(self.sel_label)
        layout.addLayout(sel1)
        layout.addLayout(sel2)
        layout.addWidget(self.continue_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._poll_training)
        self._mode_changed(self.mode.currentText())
        self._close_watcher = CloseWatcher(self, self.shutdown)

    # -- lifecycle -------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Drop pending work and stop playing (the viewer or the dock is closing)."""
        self.play_button.setChecked(False)
        self.job.cancel()
        self.side_job.cancel()
        if self.train_job is not None:
            self.train_job.stop()

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)

    @property
    def busy(self) -> bool:
        return self.job.busy or self.side_job.busy

    def _job_failed(self, action: str, exc: Exception) -> None:
        """After a failed background job (already notified): say so in the status line, stop
        playing, and show the embedding the scatter really has in the method box."""
        self.status.setText(status_text(exc, action))
        self.play_button.setChecked(False)
        if self.embedding is not None and self.method.currentText() != self.embedding.method:
            self.method.blockSignals(True)
            self.method.setCurrentText(self.embedding.method)
            self.method.blockSignals(False)

    def load_run(self, root: str | Path) -> None:
        """Explore the run folder ``root`` (asynchronous; errors become notifications)."""
        root = Path(root)
        self.run_edit.setText(str(root))
        self.status.setText(f"loading {root.name}...")

        def load():
            import torch

            from ._workers import default_torch_threads

            # One core fewer than the machine has, as the training worker: the GUI thread keeps a
            # core, and 2 threads on 2 busy cores were 6-30x slower (benchmarks/explorer.py).
            torch.set_num_threads(default_torch_threads())
            e = core.Explorer.from_run(root)
            return e, e.embedding("pca"), e.states(self.k_states.value())

        self.side_job.submit(load, self._loaded, f"loading the run {root}")

    def _loaded(self, result) -> None:
        self.explorer, emb, _ = result
        e = self.explorer
        self.selected = np.zeros(e.n_particles, bool)
        self.part.setRange(1, max(1, e.n_parts))
        self.sel_state.setRange(1, self.k_states.value())
        self.view_kind.setCurrentText("density" if e.n_particles > DENSITY_ABOVE else "points")
        if e.gt_labels is not None:
            self.colour_by.setCurrentText("ground truth")
        self._set_embedding(emb)
        self.recolour()
        self.set_cursor(emb.from_latent(e.latents.mean(0))[0])
        stage = "stage 2" if e.stage == "hierarchical" else "stage 1 (stage 2 not trained yet)"
        self.status.setText(f"{e.n_particles} particles, {e.zdim}-D latents, {e.n_parts} parts, {stage}; "
                            f"maps {e.box}^3 at {e.apix:.3g} Å")

    def compute_embedding(self, method: str) -> None:
        """Switch the scatter to ``pca`` or ``umap`` (computed in the background)."""
        if self.explorer is None:
            return
        e = self.explorer
        self.status.setText(f"computing the {method.upper()} embedding...")
        self.side_job.submit(lambda: e.embedding(method), self._embedded, f"computing the {method.upper()} embedding")

    def _embedded(self, emb: core.Embedding) -> None:
        if emb.method != self.method.currentText():
            notifications.show_info("umap-learn is not installed: showing the PCA embedding")
        self._set_embedding(emb)
        self.status.setText(f"{emb.method.upper()} embedding of {len(emb.points)} particles")

    def _set_embedding(self, emb: core.Embedding) -> None:
        self.embedding = emb
        self.scatter.set_density(emb.points)
        self._apply_view()
        self.scatter.fit()
        if self.traversal is not None:
            self.scatter.show_line(self.scatter.path, emb.from_latent(self.traversal))

    # -- colours and view ------------------------------------------------------------------------

    def recolour(self) -> None:
        """Colour the points by the chosen value (decoded in the background for parts)."""
        e = self.explorer
        if e is None:
            return
        kind, k, part = self.colour_by.currentText(), self.k_states.value(), self.part.value() - 1
        self.sel_state.setRange(1, k)
        if kind == "ground truth" and e.gt_labels is None:
            notifications.show_warning("this run has no ground truth (gt/labels.npy beside its particles)")
            return
        if kind in ("presence", "displacement") and e.n_parts == 0:
            notifications.show_warning("this run has no parts yet")
            return
        self.side_job.submit(lambda: (kind, e.colour_values(kind, part, k)), self._coloured, f"colouring by {kind}")

    def _coloured(self, result) -> None:
        kind, values = result
        # Many ground-truth states are usually ordered (a motion's steps): a sequential map.
        categorical = kind == "state" or (kind == "ground truth" and values.max() < 10)
        self.colours = _colormap(values, categorical)
        self._draw_points()

    def _draw_points(self) -> None:
        # Markers are only uploaded while shown: with 10^6 particles that costs ~1 s of GUI thread,
        # which the density view (the default for large sets) never pays.
        if self.embedding is None or self.view_kind.currentText() == "density":
            return
        n = len(self.embedding.points)
        colours = self.colours if self.colours is not None and len(self.colours) == n else np.tile([0.7, 0.7, 0.7, 1.0], (n, 1))
        selected = self.selected if len(self.selected) == n else None
        self.scatter.set_points(self.embedding.points, colours.astype(np.float32), selected)

    def _apply_view(self) -> None:
        kind = self.view_kind.currentText()
        self.scatter.markers.visible = kind in ("points", "both")
        self.scatter.density.visible = kind in ("density", "both")
        self._draw_points()
        self.scatter.canvas.update()

    # -- mouse -------------------------------------------------------------------------------------

    def _mode_changed(self, mode: str) -> None:
        self.scatter.view.camera.interactive = mode == "pan/zoom"

    def _on_wheel(self, event) -> None:
        if self.mode.currentText() != "pan/zoom":
            cam = self.scatter.view.camera
            cam.zoom(1.1 ** (-event.delta[1]), center=self.scatter.to_data(event.pos))

    def _on_press(self, event) -> None:
        if event.button != 1 or self.embedding is None:
            return
        self.press(event.pos)

    def _on_move(self, event) -> None:
        if self._dragging:
            self.move(event.pos)

    def _on_release(self, event) -> None:
        if self._dragging:
            self.release(event.pos)

    def press(self, pos) -> None:
        """Start a click or drag at canvas pixel position ``pos`` (x, y) in the current mode."""
        mode = self.mode.currentText()
        if mode == "pan/zoom" or self.embedding is None:
            return
        self._dragging = True
        xy = self.scatter.to_data(pos)
        if mode == "cursor":
            self.set_cursor(xy)
        else:
            self._lasso = [xy]

    def move(self, pos) -> None:
        xy = self.scatter.to_data(pos)
        if self.mode.currentText() == "cursor":
            self.set_cursor(xy)
        else:
            self._lasso.append(xy)
            self.scatter.show_line(self.scatter.lasso, np.array(self._lasso + [self._lasso[0]]))

    def release(self, pos) -> None:
        self.move(pos)
        self._dragging = False
        if self.mode.currentText() == "lasso":
            polygon = np.array(self._lasso)
            self._lasso = []
            self.lasso_select(polygon)

    def drag(self, positions) -> None:
        """Press at the first canvas position, move through the others, release at the last (as a
        mouse drag does; tests and scripts use it)."""
        positions = [np.asarray(p, np.float64) for p in positions]
        self.press(positions[0])
        for p in positions[1:-1]:
            self.move(p)
        self.release(positions[-1])

    # -- the live map ------------------------------------------------------------------------------

    def set_cursor(self, xy) -> None:
        """Move the cursor to embedding coordinates ``xy`` and render the map there (latest wins)."""
        if self.embedding is None:
            return
        self.cursor_xy = np.asarray(xy, np.float64)[:2]
        self.scatter.set_cursor(self.cursor_xy)
        self.show_latent(self.embedding.to_latent(self.cursor_xy)[0])

    def show_latent(self, z: np.ndarray) -> None:
        """Render the map (and part labels when shown) at latent z in the background."""
        e = self.explorer
        if e is None:
            return
        labels = self.show_labels.isChecked() and e.n_parts > 0
        self.frames_requested += 1
        self.job.submit(lambda: e.frame(z, labels=labels, live=True), self._show_frame, "rendering the map")

    def _rerender(self) -> None:
        if self.last_frame is not None:
            self.show_latent(self.last_frame.z)

    def _show_frame(self, frame: core.Frame) -> None:
        self.last_frame = frame
        self.frames_shown += 1
        e = self.explorer
        scale, translate = (e.apix,) * 3, volume_translate(frame.volume.shape, e.apix)
        if MAP_NAME in self.viewer.layers:
            self.viewer.layers[MAP_NAME].data = frame.volume
        else:
            from ._layers import map_layer

            data, kwargs, _ = map_layer(frame.volume, e.apix, MAP_NAME)
            self.viewer.add_image(data, **kwargs)
        if frame.labels is not None:
            if LABELS_NAME in self.viewer.layers:
                self.viewer.layers[LABELS_NAME].data = frame.labels
            else:
                from napari.utils.colormaps import DirectLabelColormap

                colours = {None: np.zeros(4), 0: np.zeros(4)}
                colours.update({k + 1: c for k, c in enumerate(part_colours(e.n_parts))})
                self.viewer.add_labels(frame.labels, name=LABELS_NAME, scale=scale, translate=translate, opacity=0.7,
                                       colormap=DirectLabelColormap(color_dict=colours), blending="translucent_no_depth")
            self.viewer.layers[LABELS_NAME].visible = True
        elif LABELS_NAME in self.viewer.layers:
            self.viewer.layers[LABELS_NAME].visible = False
        if frame.readout is not None:
            self._fill_readout(frame.readout)
        if self._play_step >= 0:
            QTimer.singleShot(80, self._play_next)

    def _fill_readout(self, r: core.PartReadout) -> None:
        from qtpy.QtCore import Qt
        from qtpy.QtGui import QColor

        rows = r.rows()
        colours = part_colours(len(rows))
        self.readout.setRowCount(len(rows))
        for i, (k, angle, shift, presence) in enumerate(rows):
            name = QTableWidgetItem(f"part {k}")
            name.setData(Qt.DecorationRole, QColor.fromRgbF(*colours[i]))
            for col, item in enumerate((name, QTableWidgetItem(f"{angle:.1f}"), QTableWidgetItem(f"{shift:.1f}"),
                                        QTableWidgetItem(f"{presence:.2f}"))):
                self.readout.setItem(i, col, item)

    # -- traversals ------------------------------------------------------------------------------

    def set_end(self, which: int) -> None:
        """Make the cursor traversal end A (0) or B (1)."""
        if self.cursor_xy is None:
            return
        self.ends[which] = self.cursor_xy.copy()
        self.scatter.set_ends(*self.ends)

    def compute_traversal(self) -> None:
        """Latents of the chosen traversal (in the background), drawn on the scatter and plotted."""
        e, emb = self.explorer, self.embedding
        if e is None:
            return
        kind, n = self.trav_kind.currentText(), self.trav_steps.value()
        if kind.startswith("A to B") and (self.ends[0] is None or self.ends[1] is None):
            notifications.show_warning("set ends A and B first (move the cursor, then 'A = cursor', 'B = cursor')")
            return
        a = b = None
        if kind.startswith("A to B"):
            a, b = (emb.to_latent(p)[0] for p in self.ends)

        def run():
            if kind == "PC1":
                zs = e.pc_traversal(1, n)
            elif kind == "PC2":
                zs = e.pc_traversal(min(2, e.zdim), n)
            elif kind == "A to B (straight)":
                zs = core.line_traversal(a, b, n)
            else:
                zs = e.graph_traversal(a, b, n)
            return zs, e.readouts(zs)

        self.status.setText(f"computing the {kind} traversal...")
        self.side_job.submit(run, self._traversed, f"computing the {kind} traversal")

    def _traversed(self, result) -> None:
        self.traversal, self.traversal_readouts = result
        self.scatter.show_line(self.scatter.path, self.embedding.from_latent(self.traversal))
        self._plot_readouts()
        self.status.setText(f"traversal of {len(self.traversal)} steps: Play, or export it")
        self.show_step(0)

    def show_step(self, i: int) -> None:
        """Show step ``i`` of the traversal (map, cursor, plot marker)."""
        if self.traversal is None:
            return
        i = int(np.clip(i, 0, len(self.traversal) - 1))
        z = self.traversal[i]
        self.cursor_xy = self.embedding.from_latent(z)[0]
        self.scatter.set_cursor(self.cursor_xy)
        self._plot_marker(i)
        self.show_latent(z)

    def play(self, on: bool) -> None:
        """Animate the traversal: each step is shown when the previous frame is on screen."""
        if on and self.traversal is None:
            notifications.show_warning("compute a traversal first")
            self.play_button.setChecked(False)
            return
        self.play_button.setText("Stop" if on else "Play")
        self._play_step = 0 if on else -1
        if on:
            self.show_step(0)

    def _play_next(self) -> None:
        if self._play_step < 0 or self.traversal is None:
            return
        self._play_step = (self._play_step + 1) % len(self.traversal)
        self.show_step(self._play_step)

    def _make_plot(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4, 2.2), dpi=80, facecolor="#262930")
        canvas = FigureCanvasQTAgg(fig)
        canvas.setMinimumHeight(150)
        axes = fig.subplots(1, 3)
        fig.subplots_adjust(left=0.1, right=0.98, bottom=0.2, top=0.85, wspace=0.45)
        for ax, title in zip(axes, ("angle (°)", "shift (Å)", "presence")):
            ax.set_title(title, color="w", fontsize=8)
            ax.set_facecolor("#1e1f24")
            ax.tick_params(colors="w", labelsize=7)
        return dataclasses.make_dataclass("Plot", ["fig", "canvas", "axes", "markers"])(fig, canvas, axes, [])

    def _plot_readouts(self) -> None:
        rs = self.traversal_readouts
        for ax in self.plot.axes:
            for line in list(ax.lines):
                line.remove()
        self.plot.markers = []
        if rs:
            steps = np.arange(len(rs))
            values = (np.stack([r.angle_deg for r in rs]), np.stack([r.shift for r in rs]),
                      np.stack([r.presence for r in rs]))
            colours = part_colours(values[0].shape[1])
            for ax, v in zip(self.plot.axes, values):
                for k in range(v.shape[1]):
                    ax.plot(steps, v[:, k], color=colours[k], lw=1.2)
                ax.relim()
                ax.autoscale_view()
                self.plot.markers.append(ax.axvline(0, color="w", lw=0.8, ls=":"))
        self.plot.canvas.draw_idle()

    def _plot_marker(self, i: int) -> None:
        for m in self.plot.markers:
            m.set_xdata([i, i])
        if self.plot.markers:
            self.plot.canvas.draw_idle()

    def export_series(self, folder: str | Path, overwrite: bool = False) -> None:
        """Write the traversal's maps as folder/vol_###.mrc (+ latents.npy, parts.csv; background).
        Files already in ``folder`` with those names are refused (a notification) unless ``overwrite``."""
        e, zs, rs = self.explorer, self.traversal, self.traversal_readouts
        if zs is None:
            notifications.show_warning("compute a traversal first")
            return
        try:  # before any map is computed
            core.check_map_series(folder, len(zs), True, bool(rs), overwrite)
        except InputError as exc:
            notify_error(exc, f"writing the maps to {folder}")
            return

        def run():
            vols = [e.map_at(z) for z in zs]
            return core.write_map_series(folder, vols, e.apix, latents=zs, readouts=rs, overwrite=overwrite)

        self.status.setText(f"writing {len(zs)} maps to {folder}...")
        self.side_job.submit(run, lambda paths: self.status.setText(
            f"wrote {len(paths)} maps; ChimeraX: open {Path(folder)}/vol_*.mrc vseries true"),
            f"writing the maps to {folder}")

    def export_movie(self, path: str | Path, fps: float = 8.0) -> Path | None:
        """Render every traversal step into the viewer and save the canvas frames as a GIF.

        The maps are computed here on the GUI thread, one step at a time with the event loop
        turning between steps (an export is a deliberate wait, unlike a drag)."""
        from qtpy.QtWidgets import QApplication

        e, zs = self.explorer, self.traversal
        if zs is None:
            notifications.show_warning("compute a traversal first")
            return None
        self.play_button.setChecked(False)
        labels = self.show_labels.isChecked() and e.n_parts > 0
        frames = []
        for i, z in enumerate(zs):
            self._show_frame(e.frame(z, labels=labels))
            self.cursor_xy = self.embedding.from_latent(z)[0]
            self.scatter.set_cursor(self.cursor_xy)
            QApplication.processEvents()
            frames.append(self.viewer.screenshot(canvas_only=True, flash=False))
        out = core.write_movie(path, frames, fps)
        self.status.setText(f"wrote {out} ({len(frames)} frames)")
        return out

    # -- selections --------------------------------------------------------------------------------

    def set_selection(self, mask: np.ndarray) -> None:
        self.selected = np.asarray(mask, bool)
        self._draw_points()
        n = int(self.selected.sum())
        self.sel_label.setText(f"{n} of {len(self.selected)} particles selected" if n else "no selection")

    def lasso_select(self, polygon: np.ndarray) -> None:
        """Select the particles inside ``polygon`` (M, 2) embedding coordinates."""
        if self.embedding is None:
            return
        self.scatter.show_line(self.scatter.lasso, np.concatenate([polygon, polygon[:1]]))
        self.set_selection(core.points_in_polygon(self.embedding.points, polygon))

    def select_state(self, state: int) -> None:
        """Select the particles of k-means state ``state`` (0-based, k from the colour controls)."""
        if self.explorer is None:
            return
        self.set_selection(self.explorer.states(self.k_states.value()) == state)

    def selected_rows(self) -> np.ndarray:
        """Indices of the selected particles in the run's input particle file."""
        rows = np.flatnonzero(self.selected)
        sel = self.explorer.selection
        return rows if sel is None else np.asarray(sel)[rows]

    def write_selection(self, path: str | Path, overwrite: bool = False) -> tuple[Path, Path] | None:
        """Write the selection as a .star/.cs subset of the run's particles plus an index file
        (either file existing is refused with a notification unless ``overwrite``)."""
        e = self.explorer
        if e is None or not self.selected.any():
            notifications.show_warning("select particles first (lasso or a state)")
            return None
        if e.particles is None:
            notifications.show_warning("the run's particle file was not found (see RUN/config.json)")
            return None
        try:
            out = core.write_selection(path, self.selected_rows(), e.particles, overwrite=overwrite)
        except Exception as exc:  # shown to the user; the viewer stays usable
            notify_error(exc, f"writing the selection to {path}")
            return None
        notifications.show_info(f"wrote {int(self.selected.sum())} particles to {out[0]} and {out[1].name}")
        return out

    def continue_training(self) -> Path | None:
        """Train stage 2 on the selected particles (the paper's junk removal between stages).

        Before stage 2 starts: the run itself continues with ``select`` set (as
        ``cryospire train --resume --select``). After: a new run folder beside it,
        ``<run>_subset<M>``, reuses the consensus, stage-1 and parts outputs and trains stage 2
        on the subset (:func:`cryospire_core.analysis.explorer.branch_run`). Returns the run folder."""
        from cryospire_core.pipeline.runfolder import RunFolder
        from cryospire_core.pipeline.train import STAGES, TrainConfig

        e = self.explorer
        if e is None or not self.selected.any() or e.root is None or e.particles is None:
            notifications.show_warning("load a run whose particle file exists and select particles first")
            return None
        if self.train_job is not None:
            notifications.show_warning("a training run started here is still going")
            return None
        rows = self.selected_rows()
        try:
            if not (e.root / "hierarchical").exists():
                out = e.root
                index = e.root / "explorer_selection.txt"
                write_text(index, "\n".join(map(str, rows)) + "\n")
                run = RunFolder(out)
                cfg = TrainConfig.from_dict(run.read_config()["train"])
                cfg.select = str(index.resolve())
                run.update_config(train=cfg)
            else:
                out = e.root.parent / f"{e.root.name}_subset{len(rows)}"
                index = e.root.parent / f"{out.name}_indices.txt"
                # Both land beside the run, among the user's files: refuse before writing either.
                core.check_new_run_folder(out)
                check_new_outputs([index], False, "selection file", remedy="removing the old branch first")
                write_text(index, "\n".join(map(str, rows)) + "\n")
                core.branch_run(e.root, out, index)
        except Exception as exc:
            notify_error(exc, "preparing training on the selection")
            return None
        request = TrainRequest(particles=e.particles, out=out, resume=True)
        self.train_job = TrainJob(request, STAGES, self._trained, self._train_failed)
        self.train_job.start()
        self.progress.setVisible(True)
        self._timer.start(300)
        self.status.setText(f"training stage 2 on {len(rows)} particles into {out}")
        return out

    def _poll_training(self) -> None:
        if self.train_job is None:
            return
        for ev in self.train_job.monitor.drain():
            self.progress.setMaximum(max(1, ev.total))
            self.progress.setValue(ev.done)
            self.progress.setFormat(f"{ev.stage} epoch {ev.epoch}/{ev.epochs} %p%")

    def _trained(self, status: str) -> None:
        out = self.train_job.request.out
        self._timer.stop()
        self.train_job = None
        self.progress.setVisible(False)
        notifications.show_info(f"training {status}: {out}")
        if status == "finished":
            self.load_run(out)

    def _train_failed(self, exc: BaseException) -> None:
        self._timer.stop()
        self.train_job = None
        self.progress.setVisible(False)
        notify_error(exc, "training on the selection")

    # -- dialogs ------------------------------------------------------------------------------------

    def _export_series_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the traversal maps")
        if folder:
            self.export_series(folder)

    def _export_movie_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Traversal movie", "traversal.gif", "GIF (*.gif)")
        if path:
            try:
                self.export_movie(path)
            except Exception as exc:
                notify_error(exc, f"exporting the movie to {path}")

    def _write_dialog(self) -> None:
        # No "replace?" question from Qt: it would cover only one of the two files written, and
        # write_selection refuses either existing one with a notification.
        path, _ = QFileDialog.getSaveFileName(self, "Selected particles", "selection.star", "Particles (*.star *.cs)",
                                              options=QFileDialog.DontConfirmOverwrite)
        if path:
            self.write_selection(path)

