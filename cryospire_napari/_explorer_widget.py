"""The latent explorer dock: the particles' latents as a 2D scatter; a click or drag regenerates
the map at that point live; part readouts, traversals, selections and the round trip to training.

Layout (top to bottom): run row; scatter canvas (:mod:`._scatter`: the points, their density, a
cursor, the lasso and the traversal path) with the key of its colours under it
(:mod:`._colour_legend`); view and colour controls; the part readout table; traversal controls;
the plot of the readout along the traversal (:mod:`._readout_plot`; folded away until there is
one); export and selection controls (:mod:`._explorer_actions`). Everything below the run row
scrolls when the dock is shorter than that (docked under another), so nothing is cut off.

The map box (samples per side of the live map: the model's own, or 64/128/256 whatever box it
was trained at) re-renders the current map; the layers keep their place in Å (the lattice's
napari scale and translate), so the map does not move when the box changes.

Mouse modes on the scatter: ``cursor`` (left click or drag moves the cursor: 2D -> latent ->
map), ``lasso`` (left drag draws a polygon that selects the particles inside), ``pan/zoom``
(vispy's camera). The wheel zooms in every mode.

The state (run, embedding, colouring, cursor, ends, traversal, playing, selection) is an
:class:`~cryospire_core.analysis.session.ExplorerSession`: the controls call its methods, and
the dock redraws on its events. All model work runs in a :class:`~._workers.LatestJob` (one job
running, at most one waiting, newer requests replace the waiting one), so a drag never queues
stale frames: a frame is rendered for the newest cursor position each time the previous frame is
done. Layers are touched only in the job's callback on the GUI thread.
"""

from __future__ import annotations

from enum import Enum, auto
from pathlib import Path

import numpy as np
from napari.utils import notifications
from qtpy.QtCore import QEvent, QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractButton,
    QCheckBox,
    QComboBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from cryospire_core.analysis import explorer as core
from cryospire_core.analysis.colourkey import (
    ColourKey,
    colour_key,
    density_key,
    ground_truth_state_names,
)
from cryospire_core.analysis.explorer import (
    ColourMode,
    EmbeddingMethod,
    Traversal,
    TraversalKind,
)
from cryospire_core.analysis.session import (
    ActionRefused,
    Colouring,
    ExplorerSession,
    Point,
)

from ._colour_legend import ColourLegend
from ._explorer_actions import ExplorerActions
from ._layers import label_texture, parts_colormap
from ._notify import status_text
from ._particle_file_row import ParticleFileRow
from ._parts_widget import part_colours
from ._readout_plot import ReadoutPlot, ReadoutTable
from ._run_row import RunFolderRow
from ._run_tracking import RunFollower, has_latents, hide_run_maps
from ._scatter import ScatterCanvas, ScatterView, point_colours
from ._workers import CloseWatcher, LatestJob, default_torch_threads

MAP_NAME = "explorer map"
LABELS_NAME = "explorer parts"

#: Above this many particles the scatter starts in the density view.
DENSITY_ABOVE = 200_000
#: The least height of the scatter (px): the splitter's handles give it more.
SCATTER_MIN_PX = 160


class MouseMode(Enum):
    """What a left click or drag on the scatter does."""

    CURSOR = auto()
    LASSO = auto()
    PAN_ZOOM = auto()


# The words the dock shows for each choice, in the order of its boxes.
MOUSE_LABELS = {MouseMode.CURSOR: "cursor", MouseMode.LASSO: "lasso", MouseMode.PAN_ZOOM: "pan/zoom"}
METHOD_LABELS = {EmbeddingMethod.PCA: "pca", EmbeddingMethod.UMAP: "umap"}
VIEW_LABELS = {ScatterView.POINTS: "points", ScatterView.DENSITY: "density", ScatterView.BOTH: "both"}
COLOUR_LABELS = {ColourMode.STATE: "state", ColourMode.PRESENCE: "presence", ColourMode.DISPLACEMENT: "displacement",
                 ColourMode.GROUND_TRUTH: "ground truth"}
TRAVERSAL_LABELS = {TraversalKind.PC1: "PC1", TraversalKind.PC2: "PC2", TraversalKind.LINE: "A to B (straight)",
                    TraversalKind.GRAPH: "A to B (through the data)"}


def _choices(labels: dict[Enum, str]) -> QComboBox:
    """A combo box showing the labels, each holding its value (``currentData()``)."""
    box = QComboBox()
    for value, label in labels.items():
        box.addItem(label, value)
    return box


def _place(layer, lattice) -> None:
    """Give ``layer`` the napari scale and translate of ``lattice`` (Å; a no-op when it has them
    already: most frames), so a map at another box shows at the same place."""
    scale, translate = lattice.napari_scale(), lattice.napari_translate()
    if tuple(layer.scale) != scale or tuple(layer.translate) != translate:
        layer.scale, layer.translate = scale, translate
        layer.metadata["apix"] = lattice.apix


class _VerticalScroll(QScrollArea):
    """Scrolls ``body`` up and down, never sideways. The body gets the viewport's width and the
    larger of the viewport's height and its own least height at that width (QScrollArea's own
    resizing takes the body's preferred height whenever a wrapped label is in it, and then
    scrolls a dock that has room for everything). It asks for the body's whole width (a
    QScrollArea caps its size hint at 36 characters, which squeezed the controls) and at least
    its least width, plus the scroll bar's; and at least the least height of each of ``panes``
    (the scatter; the controls with the part table), so a dock squeezed under another still
    shows either whole."""

    def __init__(self, body: QWidget, panes: tuple[QWidget, ...]) -> None:
        super().__init__()
        self.panes = panes
        self.setWidget(body)
        self.setFrameShape(QFrame.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        body.installEventFilter(self)

    def fit_body(self) -> None:
        body, width = self.widget(), self.viewport().width()
        layout = body.layout()
        least = layout.minimumHeightForWidth(width) if layout.hasHeightForWidth() else layout.minimumSize().height()
        body.resize(width, max(self.viewport().height(), least))

    def eventFilter(self, watched, event) -> bool:
        if watched is self.widget() and event.type() == QEvent.LayoutRequest:
            self.fit_body()  # its contents' least size changed (a table got rows, a row was shown)
        return super().eventFilter(watched, event)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.fit_body()

    def sizeHint(self) -> QSize:
        hint = self.widget().sizeHint()
        return QSize(hint.width() + self.verticalScrollBar().sizeHint().width(), hint.height())

    def minimumSizeHint(self) -> QSize:
        width = self.widget().minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
        return QSize(width, max([super().minimumSizeHint().height()] + [p.minimumSizeHint().height() for p in self.panes]))


def _show_quietly(control: QComboBox | QSpinBox | QAbstractButton, value) -> None:
    """Show ``value`` (a box's data, a spin box's number, a check state) without emitting: the
    control follows the session, it does not ask it for anything."""
    control.blockSignals(True)
    if isinstance(control, QComboBox):
        control.setCurrentIndex(control.findData(value))
    elif isinstance(control, QSpinBox):
        control.setValue(value)
    else:
        control.setChecked(value)
    control.blockSignals(False)


class ExplorerWidget(QWidget):
    """Dock: the latent explorer (see the module docstring); ``session`` holds what it shows,
    ``actions`` does what its export, selection and training buttons do."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = ExplorerSession()
        self.colours: np.ndarray | None = None
        self.last_frame: core.Frame | None = None
        self.frames_requested = 0
        self.frames_shown = 0
        self._lasso: list[np.ndarray] = []
        self._dragging = False
        self.job = LatestJob(self._job_failed)  # maps: latest wins
        self.side_job = LatestJob(self._job_failed)  # embeddings, colours, traversals, exports

        run_row = RunFolderRow(self.load_run)
        self.run_edit = run_row.edit

        self.scatter = ScatterCanvas()
        self.scatter.canvas.events.mouse_press.connect(self._on_press)
        self.scatter.canvas.events.mouse_move.connect(self._on_move)
        self.scatter.canvas.events.mouse_release.connect(self._on_release)
        self.scatter.canvas.events.mouse_wheel.connect(self._on_wheel)
        self.scatter.canvas.native.setMinimumHeight(SCATTER_MIN_PX)
        self.legend = ColourLegend()
        self.colour_key: ColourKey | None = None  # what the points' colours mean
        self._state_names: list[str] | None = None  # the run's ground-truth states, for the legend

        self.mode = _choices(MOUSE_LABELS)
        self.mode.currentIndexChanged.connect(lambda _: self._mode_changed(self.mode.currentData()))
        self.method = _choices(METHOD_LABELS)
        self.method.currentIndexChanged.connect(lambda _: self.compute_embedding(self.method.currentData()))
        self.view_kind = _choices(VIEW_LABELS)
        self.view_kind.currentIndexChanged.connect(lambda _: self._apply_view())
        self.colour_by = _choices(COLOUR_LABELS)
        self.colour_by.currentIndexChanged.connect(lambda _: self._colouring_edited())
        self.k_states = QSpinBox()
        self.k_states.setRange(2, 50)
        self.k_states.setValue(self.session.colouring.k)
        self.k_states.setPrefix("k ")
        self.k_states.valueChanged.connect(lambda _: self._colouring_edited())
        self.part = QSpinBox()
        self.part.setRange(1, 1)
        self.part.setPrefix("part ")
        self.part.valueChanged.connect(lambda _: self._colouring_edited())
        self.show_labels = QCheckBox("part-coloured map")
        self.show_labels.toggled.connect(lambda _: self._rerender())
        self.map_box = QComboBox()
        self.map_box.setSizeAdjustPolicy(QComboBox.AdjustToContents)  # filled when a run loads
        self.map_box.setToolTip("samples per side of the map shown (same field of view; 'trained': the model's box)")
        self.map_box.currentIndexChanged.connect(lambda _: self._map_box_edited())
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
        box_row = QHBoxLayout()  # across the columns: its long label does not widen the first one
        box_row.addWidget(QLabel("map box"))
        box_row.addWidget(self.map_box)
        box_row.addStretch(1)
        grid.addLayout(box_row, 3, 0, 1, 4)

        self.readout = ReadoutTable()

        self.trav_kind = _choices(TRAVERSAL_LABELS)
        self.trav_steps = QSpinBox()
        self.trav_steps.setRange(2, 200)
        self.trav_steps.setValue(20)
        self.trav_steps.setSuffix(" steps")
        set_a, set_b = QPushButton("A = cursor"), QPushButton("B = cursor")
        set_a.clicked.connect(lambda: self.session.set_end(0))
        set_b.clicked.connect(lambda: self.session.set_end(1))
        self.trav_button = QPushButton("Traverse")
        self.trav_button.clicked.connect(self.compute_traversal)
        self.play_button = QPushButton("Play")
        self.play_button.setCheckable(True)
        self.play_button.toggled.connect(self._play_toggled)
        self.export_series_button = QPushButton("Export MRC series...")
        self.export_movie_button = QPushButton("Export movie (mp4, GIF)...")
        # The plot is folded away until there is a traversal to plot: the dock fits a 950 px window.
        self.plot_toggle = QToolButton()
        self.plot_toggle.setText("plot")
        self.plot_toggle.setToolTip("each part's angle, shift and presence along the traversal")
        self.plot_toggle.setCheckable(True)
        self.plot_toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.plot_toggle.toggled.connect(self._show_plot)
        trav1, trav2, trav3 = QHBoxLayout(), QHBoxLayout(), QHBoxLayout()
        for w in (self.trav_kind, self.trav_steps, self.plot_toggle):
            trav1.addWidget(w)
        for w in (set_a, set_b, self.trav_button, self.play_button):
            trav2.addWidget(w)
        for w in (self.export_series_button, self.export_movie_button):
            trav3.addWidget(w)
        self.plot = ReadoutPlot()

        self.sel_label = QLabel("no selection")
        self.sel_state = QSpinBox()
        self.sel_state.setRange(1, 50)
        self.sel_state.setPrefix("state ")
        sel_state_button = QPushButton("Select state")
        sel_state_button.clicked.connect(lambda: self.session.select_state(self.sel_state.value() - 1))
        clear = QPushButton("Clear")
        clear.clicked.connect(self.session.clear_selection)
        self.write_button = QPushButton("Write selection (.star/.cs)...")
        self.continue_button = QPushButton("Continue training with this selection")
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        sel1, sel2 = QHBoxLayout(), QHBoxLayout()
        for w in (self.sel_state, sel_state_button, clear):
            sel1.addWidget(w)
        for w in (self.write_button,):
            sel2.addWidget(w)
        self.status = QLabel("no run loaded")
        self.status.setWordWrap(True)

        self.actions = ExplorerActions(self)
        self.particle_row = ParticleFileRow(self.actions.use_particle_file)  # shown when the run's file moved
        self.export_series_button.clicked.connect(self.actions.export_series_dialog)
        self.export_movie_button.clicked.connect(self.actions.export_movie_dialog)
        self.write_button.clicked.connect(self.actions.write_dialog)
        self.continue_button.clicked.connect(self.actions.continue_training)

        # The scatter with its legend (a strip of its own: it covers no point) and the controls
        # with the part table share the height the user gives them; the traversal plot, when
        # unfolded, takes a share of what is left. (Folded, it is not a splitter pane: a hidden
        # pane cost the panes beside it their least height.)
        scatter_pane, controls = QWidget(), QWidget()
        column = QVBoxLayout(scatter_pane)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self.scatter.canvas.native, 1)
        column.addWidget(self.legend)
        top = QVBoxLayout(controls)
        top.setContentsMargins(0, 0, 0, 0)
        top.addLayout(grid)
        top.addWidget(self.readout, 1)
        top.addLayout(trav1)
        top.addLayout(trav2)
        self.splitter = QSplitter(Qt.Vertical)
        self.splitter.setChildrenCollapsible(False)
        # No padding (napari's theme pads every widget by 1 px): a splitter's least height leaves
        # it out, and the part table came out 2 px short of its rows.
        self.splitter.setStyleSheet("QSplitter { padding: 0px; }")
        for w, stretch in ((scatter_pane, 3), (controls, 2)):
            self.splitter.addWidget(w)
            self.splitter.setStretchFactor(self.splitter.count() - 1, stretch)
        self._show_plot(False)
        body = QWidget()
        inner = QVBoxLayout(body)
        inner.setContentsMargins(0, 0, 0, 0)
        inner.addWidget(self.particle_row)
        inner.addWidget(self.splitter, 5)
        inner.addWidget(self.plot, 1)
        inner.addLayout(trav3)
        inner.addWidget(self.sel_label)
        inner.addLayout(sel1)
        inner.addLayout(sel2)
        inner.addWidget(self.continue_button)
        # Below the run row everything scrolls when the dock is shorter than its controls (stacked
        # under another dock): every control stays reachable and the part table keeps its rows.
        self.scroll = _VerticalScroll(body, (scatter_pane, controls))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)  # narrow margins: the controls get the dock's width
        layout.addWidget(run_row)
        layout.addWidget(self.scroll, 1)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)

        ev = self.session.events
        ev.loaded.connect(self._on_loaded)
        ev.embedding_changed.connect(self._on_embedding)
        ev.colouring_changed.connect(self._on_colouring)
        ev.cursor_moved.connect(self._on_cursor)
        ev.map_box_changed.connect(self._on_map_box)
        ev.ends_changed.connect(self._on_ends)
        ev.traversal_changed.connect(self._on_traversal)
        ev.step_changed.connect(self.plot.mark)
        ev.playing_changed.connect(self._on_playing)
        ev.selection_changed.connect(self._on_selection)
        self._mode_changed(self.mode.currentData())
        self._close_watcher = CloseWatcher(self, self.shutdown)
        self._follower = RunFollower(self, self.viewer, self.load_run, self.run_edit.text, has_latents)

    # -- lifecycle -------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Drop pending work and stop playing (the viewer or the dock is closing)."""
        self.session.stop()
        self.job.cancel()
        self.side_job.cancel()
        self.plot.shutdown()
        self.actions.shutdown()

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)

    @property
    def busy(self) -> bool:
        return self.job.busy or self.side_job.busy or self.plot.busy or self.actions.busy

    def _job_failed(self, action: str, exc: Exception) -> None:
        """After a failed background job (already notified): say so in the status line, stop
        playing, and show the embedding the scatter really has in the method box."""
        self.status.setText(status_text(exc, action))
        self.session.stop()
        if self.session.embedding is not None:
            _show_quietly(self.method, self.session.embedding.method)

    def load_run(self, root: str | Path, particles: str | Path | None = None) -> None:
        """Explore the run folder ``root`` (asynchronous; errors become notifications);
        ``particles``: its particle file, when not where the run recorded it."""
        root = Path(root)
        self.run_edit.setText(str(root))
        self.status.setText(f"loading {root.name}...")
        k = self.session.colouring.k

        def load():
            from cryospire_core.pipeline.threads import ThreadBudget, use_threads

            # One core fewer than the machine has, as the training worker: the GUI thread keeps a
            # core, and 2 threads on 2 busy cores were 6-30x slower (benchmarks/explorer.py).
            use_threads(ThreadBudget(default_torch_threads(), "the explorer's decoding thread"))
            e = core.Explorer.from_run(root, particles)
            e.states(k)  # cached for the first colouring
            return e, e.embedding(EmbeddingMethod.PCA)

        self.side_job.submit(load, lambda result: self.session.load(*result), f"loading the run {root}")

    def _on_loaded(self, e: core.Explorer) -> None:
        self.part.blockSignals(True)  # the session's colouring, shown next, has its part in range
        self.part.setRange(1, max(1, e.n_parts))
        self.part.blockSignals(False)
        _show_quietly(self.view_kind, ScatterView.DENSITY if e.n_particles > DENSITY_ABOVE else ScatterView.POINTS)
        self._fill_map_boxes(e)
        self.particle_row.show_missing(e.particles_missing)
        self._state_names = ground_truth_state_names(e.gt_dir)
        self.colour_key = None  # the last run's, until this run's colours arrive
        self._show_key()
        self._describe_run()

    def _describe_run(self) -> None:
        """The status line: the run, the lattice it was trained at, and the maps' when another."""
        e = self.session.explorer
        stage = "stage 2" if e.stage == "hierarchical" else "stage 1 (stage 2 not trained yet)"
        maps = e.map_lattice(self.session.map_box)
        shown = "" if maps.box == e.lattice.box else f"; maps at {maps.box}^3, {maps.apix:.3g} Å/px"
        self.status.setText(f"{e.n_particles} particles, {e.zdim}-D latents, {e.n_parts} parts, {stage}; "
                            f"trained at {e.lattice.box} px, {e.lattice.apix:.3g} Å/px{shown}")

    def compute_embedding(self, method: EmbeddingMethod) -> None:
        """Switch the scatter to the PCA or UMAP embedding (computed in the background)."""
        e = self.session.explorer
        if e is None:
            return
        name = method.value.upper()
        self.status.setText(f"computing the {name} embedding...")

        def embedded(emb: core.Embedding) -> None:
            if emb.method != method:
                notifications.show_info("umap-learn is not installed: showing the PCA embedding")
            self.session.set_embedding(emb)
            self.status.setText(f"{emb.method.value.upper()} embedding of {len(emb.points)} particles")

        self.side_job.submit(lambda: e.embedding(method), embedded, f"computing the {name} embedding")

    def _on_embedding(self, emb: core.Embedding) -> None:
        _show_quietly(self.method, emb.method)
        self.scatter.set_density(emb.points)
        self._apply_view()
        self.scatter.fit()
        trav, cursor, ends = self.session.traversal, self.session.cursor, self.session.ends
        self.scatter.show_line(self.scatter.path, None if trav is None else emb.from_latent(trav.latents))
        self._on_ends(*ends)
        if cursor is not None:
            self.scatter.set_cursor(cursor.xy)

    # -- colours and view ------------------------------------------------------------------------

    def _colouring_edited(self) -> None:
        """The colour controls changed: ask the session (a refusal is a warning, and the
        controls go back to the session's colouring)."""
        try:
            self.session.set_colouring(self.colour_by.currentData(), self.part.value() - 1, self.k_states.value())
        except ActionRefused as exc:
            notifications.show_warning(str(exc))
            self._show_colouring(self.session.colouring)

    def _show_colouring(self, c: Colouring) -> None:
        _show_quietly(self.colour_by, c.mode)
        _show_quietly(self.part, c.part + 1)
        _show_quietly(self.k_states, c.k)
        self.sel_state.setRange(1, c.k)

    def _on_colouring(self, c: Colouring) -> None:
        """Show the colouring in the controls and colour the points (decoded in the background
        for a part's values)."""
        self._show_colouring(c)
        e = self.session.explorer
        if e is not None:
            self.side_job.submit(lambda: (c, e.colour_values(c.mode, c.part, c.k)), self._coloured,
                                 f"colouring by {COLOUR_LABELS[c.mode]}")

    def _coloured(self, result) -> None:
        c, values = result
        self.colour_key = colour_key(c.mode, values, c.part, self._state_names)
        self.colours = point_colours(values, self.colour_key)
        self._show_key()
        self._draw_points()

    def _show_key(self) -> None:
        """The legend of what the scatter shows: the density image's scale in the density view,
        else the points' colouring (none before their colours arrive)."""
        density = self.view_kind.currentData() == ScatterView.DENSITY and self.session.embedding is not None
        self.legend.show_key(density_key(self.scatter.density_max) if density else self.colour_key)

    def _draw_points(self) -> None:
        # Markers are only uploaded while shown: with 10^6 particles that costs ~1 s of GUI thread,
        # which the density view (the default for large sets) never pays.
        emb = self.session.embedding
        if emb is None or self.view_kind.currentData() == ScatterView.DENSITY:
            return
        n = len(emb.points)
        colours = self.colours if self.colours is not None and len(self.colours) == n else np.tile([0.7, 0.7, 0.7, 1.0], (n, 1))
        selected = self.session.selected if len(self.session.selected) == n else None
        self.scatter.set_points(emb.points, colours.astype(np.float32), selected)

    def _apply_view(self) -> None:
        self.scatter.set_view(self.view_kind.currentData())
        self._show_key()
        self._draw_points()

    # -- mouse -------------------------------------------------------------------------------------

    def _mode_changed(self, mode: MouseMode) -> None:
        self.scatter.view.camera.interactive = mode == MouseMode.PAN_ZOOM

    def _on_wheel(self, event) -> None:
        if self.mode.currentData() != MouseMode.PAN_ZOOM:
            cam = self.scatter.view.camera
            cam.zoom(1.1 ** (-event.delta[1]), center=self.scatter.to_data(event.pos))

    def _on_press(self, event) -> None:
        if event.button != 1 or self.session.embedding is None:
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
        mode = self.mode.currentData()
        if mode == MouseMode.PAN_ZOOM or self.session.embedding is None:
            return
        self._dragging = True
        xy = self.scatter.to_data(pos)
        if mode == MouseMode.CURSOR:
            self.session.move_cursor(xy)
        else:
            self._lasso = [xy]

    def move(self, pos) -> None:
        xy = self.scatter.to_data(pos)
        if self.mode.currentData() == MouseMode.CURSOR:
            self.session.move_cursor(xy)
        else:
            self._lasso.append(xy)
            self.scatter.show_line(self.scatter.lasso, np.array(self._lasso + [self._lasso[0]]))

    def release(self, pos) -> None:
        self.move(pos)
        self._dragging = False
        if self.mode.currentData() == MouseMode.LASSO:
            polygon = np.array(self._lasso)
            self._lasso = []
            self.scatter.show_line(self.scatter.lasso, np.concatenate([polygon, polygon[:1]]))
            self.session.select_lasso(polygon)

    def drag(self, positions) -> None:
        """Press at the first canvas position, move through the others, release at the last (as a
        mouse drag does; tests and scripts use it)."""
        positions = [np.asarray(p, np.float64) for p in positions]
        self.press(positions[0])
        for p in positions[1:-1]:
            self.move(p)
        self.release(positions[-1])

    # -- the map box ------------------------------------------------------------------------------

    def _fill_map_boxes(self, e: core.Explorer) -> None:
        """Offer the run's map boxes (:meth:`~core.Explorer.map_boxes`, its own marked 'trained')
        and show the session's."""
        self.map_box.blockSignals(True)
        self.map_box.clear()
        for box in e.map_boxes():
            self.map_box.addItem(f"{box}^3 (trained)" if box == e.lattice.box else f"{box}^3", box)
        self.map_box.blockSignals(False)
        self._show_map_box(self.session.map_box)

    def _show_map_box(self, box: int | None) -> None:
        e = self.session.explorer
        if e is None:
            return
        box = e.map_lattice(box).box
        if self.map_box.findData(box) < 0:  # set by a script to a box the list does not offer
            self.map_box.blockSignals(True)
            self.map_box.addItem(f"{box}^3", box)
            self.map_box.blockSignals(False)
        _show_quietly(self.map_box, box)

    def _map_box_edited(self) -> None:
        """The map box control changed: ask the session (it re-renders on the event); the
        model's own box is the session's None, so it follows the next run's."""
        e, box = self.session.explorer, self.map_box.currentData()
        if e is None or box is None:
            return
        try:
            self.session.set_map_box(None if box == e.lattice.box else box)
        except ActionRefused as exc:
            notifications.show_warning(str(exc))
            self._show_map_box(self.session.map_box)

    def _on_map_box(self, box: int | None) -> None:
        self._show_map_box(box)
        if self.session.explorer is not None:
            self._describe_run()
        self._rerender()

    # -- the live map ------------------------------------------------------------------------------

    def _on_cursor(self, p: Point) -> None:
        self.scatter.set_cursor(p.xy)
        self.show_latent(p.z)

    def show_latent(self, z: np.ndarray) -> None:
        """Render the map (and part labels when shown) at latent z in the background."""
        e = self.session.explorer
        if e is None:
            return
        labels = self.show_labels.isChecked() and e.n_parts > 0
        box = self.session.map_box
        self.frames_requested += 1
        self.job.submit(lambda: e.frame(z, labels=labels, live=True, box=box), self.show_frame, "rendering the map")

    def _rerender(self) -> None:
        if self.last_frame is not None:
            self.show_latent(self.last_frame.z)

    def show_frame(self, frame: core.Frame) -> None:
        """Put ``frame`` in the viewer: the map, the part labels (hidden when it has none) and
        the readout table, placed in Å by the frame's lattice; while playing, the next step
        follows."""
        self.last_frame = frame
        self.frames_shown += 1
        e = self.session.explorer
        lattice = frame.lattice
        scale, translate = lattice.napari_scale(), lattice.napari_translate()
        if MAP_NAME in self.viewer.layers:
            layer = self.viewer.layers[MAP_NAME]
            layer.data = frame.volume
            _place(layer, lattice)
        else:
            from ._layers import map_layer

            data, kwargs, _ = map_layer(frame.volume, lattice.apix, MAP_NAME)
            hide_run_maps(self.viewer, e.root)  # this live map of the run takes their place
            self.viewer.add_image(data, **kwargs)
        if frame.labels is not None:
            if LABELS_NAME in self.viewer.layers:
                self.viewer.layers[LABELS_NAME].data = label_texture(frame.labels)
                _place(self.viewer.layers[LABELS_NAME], lattice)
            else:
                self.viewer.add_labels(label_texture(frame.labels), name=LABELS_NAME, scale=scale, translate=translate, opacity=0.7,
                                       colormap=parts_colormap(part_colours(e.n_parts)), blending="translucent_no_depth")
            self.viewer.layers[LABELS_NAME].visible = True
        elif LABELS_NAME in self.viewer.layers:
            self.viewer.layers[LABELS_NAME].visible = False
        if frame.readout is not None and self.readout.show_readout(frame.readout):
            self._fit_panes()
        if self.session.playing:
            QTimer.singleShot(80, self.session.advance)

    def _fit_panes(self) -> None:
        """Give the controls pane (map options and the part table) the height it now needs, from
        the scatter's pane: a splitter does not grow a pane when its contents' minimum grows."""
        self.scroll.fit_body()  # now, not at the next layout pass: the body's least height grew too
        sizes = self.splitter.sizes()
        short = self.splitter.widget(1).minimumSizeHint().height() - sizes[1]
        if short > 0:
            give = min(short, max(0, sizes[0] - self.splitter.widget(0).minimumSizeHint().height()))
            self.splitter.setSizes([sizes[0] - give, sizes[1] + give])

    # -- traversals ------------------------------------------------------------------------------

    def _on_ends(self, a: Point | None, b: Point | None) -> None:
        self.scatter.set_ends(None if a is None else a.xy, None if b is None else b.xy)

    def compute_traversal(self) -> None:
        """Latents of the chosen traversal (in the background), drawn on the scatter and plotted."""
        kind, n = self.trav_kind.currentData(), self.trav_steps.value()
        if self.session.explorer is None:
            return
        try:
            compute = self.session.traversal_request(kind, n)
        except ActionRefused as exc:
            notifications.show_warning(str(exc))
            return
        label = TRAVERSAL_LABELS[kind]
        self.status.setText(f"computing the {label} traversal...")
        self.side_job.submit(compute, self.session.set_traversal, f"computing the {label} traversal")

    def _on_traversal(self, trav: Traversal | None) -> None:
        emb = self.session.embedding
        self.scatter.show_line(self.scatter.path, None if trav is None else emb.from_latent(trav.latents))
        self.plot.plot([] if trav is None else trav.readouts)
        if trav is not None:
            self.plot_toggle.setChecked(True)  # unfold the plot for it
            self.status.setText(f"traversal of {len(trav)} steps: Play, or export it")

    def _show_plot(self, on: bool) -> None:
        """Unfold (``on``) or fold away the traversal plot."""
        self.plot.setVisible(on)
        self.plot_toggle.setArrowType(Qt.DownArrow if on else Qt.RightArrow)

    def _play_toggled(self, on: bool) -> None:
        """Animate the traversal: each step is shown when the previous frame is on screen."""
        if not on:
            self.session.stop()
            return
        try:
            self.session.play()
        except ActionRefused as exc:
            notifications.show_warning(str(exc))
            _show_quietly(self.play_button, False)

    def _on_playing(self, on: bool) -> None:
        _show_quietly(self.play_button, on)
        self.play_button.setText("Stop" if on else "Play")

    # -- selections --------------------------------------------------------------------------------

    def _on_selection(self, mask: np.ndarray) -> None:
        self._draw_points()
        n = int(mask.sum())
        self.sel_label.setText(f"{n} of {len(mask)} particles selected" if n else "no selection")
