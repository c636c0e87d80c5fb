"""The parts dock: the discovered parts of a run as layers and a table, with re-clustering,
merge, split and export of per-part soft masks.

Shows RUN/parts/clustering.npz over the stage-1 Gaussians: a Labels layer ``parts`` (each voxel
labelled 1 + the part with the most density there, :func:`cryospire_core.models.parts.part_label_volume`)
and a Points layer ``part gaussians`` (centres coloured by part, diameter 2 x width). Colours
come from one palette shared by the Labels colormap, the points and the table's swatches.

Every edit (re-cluster with new counts, merge two parts, split one) recomputes the clustering
and the label map in a background job and, while stage 2 has not been seeded from the
clustering yet, writes it back atomically to RUN/parts/clustering.npz so that "Continue to
stage 2" (train dock) or ``cryospire train --resume`` trains on the edited parts. The loading,
edits and mask export are :mod:`cryospire_core.services.parts`, which ``cryospire parts`` calls
too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils import notifications
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cryospire_core.analysis.latentspace import PartMapFiles
from cryospire_core.colours import part_hex
from cryospire_core.errors import InputError
from cryospire_core.io.chimerax import SCRIPT_NAME
from cryospire_core.io.outputs import GUI_REMEDY
from cryospire_core.services import parts as run_parts
from cryospire_core.services.parts import RunParts, load_parts

from ._layers import PARTS_OPACITY, gaussian_points, label_texture, parts_colormap
from ._notify import notify_error, status_text
from ._run_row import RunFolderRow
from ._run_tracking import RunFollower, has_parts
from ._workers import CloseWatcher, LatestJob, warm_up, warm_up_labels

LABELS_NAME = "parts"
POINTS_NAME = "part gaussians"


def part_colours(n: int) -> np.ndarray:
    """(n, 4) RGBA in [0, 1] of parts 0..n-1, opaque: the core's palette
    (:func:`cryospire_core.colours.part_hex`, which the ChimeraX scripts of exported masks use too)."""
    rgb = [[int(h[i:i + 2], 16) / 255.0 for i in (1, 3, 5)] for h in part_hex(n)]
    return np.concatenate([np.reshape(rgb, (n, 3)), np.ones((n, 1))], axis=1)


class PartsWidget(QWidget):
    """Dock: the parts of a run (see the module docstring)."""

    COLUMNS = ("colour", "name", "Gaussians", "visible")

    def __init__(self, napari_viewer, follow: bool = True) -> None:
        """``follow``: load the run the viewer shows by itself (:class:`._run_tracking.RunFollower`;
        the Train dock's Parts review shows the run it trains instead)."""
        super().__init__()
        self.viewer = napari_viewer
        self.state: RunParts | None = None
        self.visible: np.ndarray = np.zeros(0, bool)
        self._showing: RunParts | None = None
        self.job = LatestJob(self._job_failed)
        warm_up_labels()
        warm_up()

        run_row = RunFolderRow(self.load_run)
        self.run_edit = run_row.edit

        self.level1 = QSpinBox()
        self.level1.setRange(0, 64)
        self.level1.setSpecialValueText("auto")
        self.level2 = QSpinBox()
        self.level2.setRange(0, 16)
        self.level2.setSpecialValueText("auto")
        self.recluster_button = QPushButton("Re-cluster")
        self.recluster_button.clicked.connect(lambda: self.recluster(self._count(self.level1), self._count(self.level2)))
        counts = QFormLayout()
        counts.addRow("level-1 clusters", self.level1)
        counts.addRow("level-2 splits", self.level2)

        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.itemChanged.connect(self._item_changed)

        self.merge_button = QPushButton("Merge 2 selected")
        self.merge_button.clicked.connect(self._merge_selected)
        self.split_k = QSpinBox()
        self.split_k.setRange(2, 8)
        self.split_k.setMinimumWidth(60)
        self.split_button = QPushButton("Split selected into")
        self.split_button.clicked.connect(self._split_selected)
        edit_row = QHBoxLayout()
        for w in (self.merge_button, self.split_button, self.split_k):
            edit_row.addWidget(w)
        self.export_button = QPushButton("Export soft masks...")
        self.export_button.clicked.connect(self._export_dialog)
        self.status = QLabel("no run loaded")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addWidget(run_row)
        layout.addLayout(counts)
        layout.addWidget(self.recluster_button)
        layout.addWidget(self.table, 1)
        layout.addLayout(edit_row)
        layout.addWidget(self.export_button)
        layout.addWidget(self.status)
        self._enable()
        self._close_watcher = CloseWatcher(self, self.shutdown)
        if follow:
            self._follower = RunFollower(self, self.viewer, self.load_run, self.run_edit.text, has_parts)

    def shutdown(self) -> None:
        """Drop pending work (the viewer or the dock is closing)."""
        self.job.cancel()
        self._showing = None

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)

    # -- loading and editing (each runs in the background job) ----------------------------------

    @property
    def busy(self) -> bool:
        return self.job.busy or self._showing is not None

    def load_run(self, root: str | Path) -> None:
        """Show the parts of the run folder ``root`` (asynchronous; errors become notifications)."""
        root = Path(root)
        self.run_edit.setText(str(root))
        self.status.setText(f"loading parts of {root.name}...")
        self.job.submit(lambda: load_parts(root), self._show, f"loading the parts of {root}")

    def recluster(self, n_level1: str | int = "auto", n_level2: str | int | None = "auto") -> None:
        """Re-run both clustering levels on the saved inputs with new counts (no retraining)."""
        state = self._require()
        if state is None:
            return
        self.status.setText(f"re-clustering (level 1: {n_level1}, level 2: {n_level2})...")
        self.job.submit(lambda: run_parts.recluster(state, n_level1, n_level2), self._show, "re-clustering")

    def merge(self, a: int, b: int) -> None:
        """Merge parts ``a`` and ``b`` (0-based; the lower number stays)."""
        state = self._require()
        if state is None:
            return
        a, b = sorted((int(a), int(b)))
        self._edit(lambda: run_parts.merge(state, a, b), f"merging parts {a + 1} and {b + 1}")

    def split(self, k: int, n: int) -> None:
        """Cut part ``k`` (0-based) into ``n`` spatial pieces."""
        state = self._require()
        if state is None:
            return
        self._edit(lambda: run_parts.split(state, int(k), int(n)), f"splitting part {k + 1} into {n}")

    def _edit(self, edit, what: str) -> None:
        """Run ``edit()`` (new parts, saved to the run when allowed) in the background job."""
        self.status.setText(what + "...")
        self.job.submit(edit, self._show, what)

    def export_masks(self, folder: str | Path, overwrite: bool = False) -> list[Path]:
        """Write the part label map and one soft mask per part of the parts shown into ``folder``
        (:func:`cryospire_core.services.parts.export_masks`: ``part_labels.mrc``,
        ``mask_part_<k>.mrc``, k from 01, and the ChimeraX script ``open_in_chimerax.cxc``) in the
        background job; returns the masks' paths, written once ``busy`` is False. Files of those
        names already there are refused at once with a notification unless ``overwrite``."""
        state = self._require()
        if state is None:
            return []
        action = f"exporting the part masks to {folder}"
        try:  # before anything is computed, as the command does
            files = run_parts.check_mask_outputs(folder, state.n_parts, overwrite, option="part masks",
                                                 remedy=GUI_REMEDY)
        except InputError as exc:
            notify_error(exc, action)
            return []

        def written(files: PartMapFiles) -> None:
            self.status.setText(f"wrote {files.labels.name} and {len(files.masks)} soft masks to {files.folder}; "
                                f"ChimeraX: open {files.folder / SCRIPT_NAME}")
            notifications.show_info(f"wrote the part label map and {len(files.masks)} soft masks to {files.folder}")

        self.status.setText(f"writing the part masks to {folder}...")
        self.job.submit(lambda: run_parts.export_masks(state, folder, overwrite, option="part masks",
                                                       remedy=GUI_REMEDY), written, action)
        return files.masks

    # -- display ---------------------------------------------------------------------------------

    def _show(self, state: RunParts) -> None:
        """Put ``state`` into the layers and the table (GUI thread).

        Creating a napari layer stalls the viewer for ~0.1-0.2 s, so a missing layer is created
        alone and the rest continues in the next turn of the event loop (two short stalls
        rather than one long one).
        """
        if LABELS_NAME not in self.viewer.layers or POINTS_NAME not in self.viewer.layers:
            self._showing = state
            self._create_layer(state)
            QTimer.singleShot(0, self._continue_show)
            return
        self._showing = None
        self.state = state
        K = state.n_parts
        self.visible = np.ones(K, bool)
        colours = part_colours(K)
        centres, sizes = gaussian_points(state.clustering.inputs.centres, state.widths, state.lattice)
        point_colours = colours[state.clustering.part_index]
        features = {"part": state.clustering.part_index + 1}
        # In place, and only what changed: every assignment makes napari redraw, and an edit
        # changes the labels and the colours but not the Gaussians or the lattice.
        labels, points = self.viewer.layers[LABELS_NAME], self.viewer.layers[POINTS_NAME]
        labels.data = label_texture(state.labels)
        labels.metadata["apix"] = state.lattice.apix
        scale, translate = state.lattice.napari_scale(), state.lattice.napari_translate()
        for layer in (labels, points):
            if not (np.allclose(layer.scale, scale) and np.allclose(layer.translate, translate)):
                layer.scale, layer.translate = scale, translate
        if points.data.shape != centres.shape or not np.array_equal(points.data, centres):
            points.data = centres
        if not np.array_equal(points.size, sizes):
            points.size = sizes
        points.features = features
        points.face_color = point_colours
        self._apply_visibility()
        self._fill_table(colours)
        saved = "edits saved to the run" if state.saved else "edits not saved: stage 2 was already seeded from the run's parts"
        self.status.setText(f"{K} parts; {saved}")
        self.status.setToolTip(state.clustering.rule)
        self._enable()

    def _job_failed(self, action: str, exc: Exception) -> None:
        """After a failed load or edit (already notified): say so, keep showing the last good parts."""
        self._showing = None
        self.status.setText(status_text(exc, action))
        self._enable()

    def _continue_show(self) -> None:
        if self._showing is not None:  # None: the dock closed meanwhile
            self._show(self._showing)

    def _create_layer(self, state: RunParts) -> None:
        """Add the first missing one of the two layers (filled in by :meth:`_show`)."""
        if LABELS_NAME not in self.viewer.layers:
            self.viewer.add_labels(label_texture(state.labels), name=LABELS_NAME, scale=state.lattice.napari_scale(),
                                   translate=state.lattice.napari_translate(), opacity=PARTS_OPACITY,
                                   blending="translucent_no_depth")
        else:  # hidden, as a run opens (its discs would hide the map in 3D)
            centres, sizes = gaussian_points(state.clustering.inputs.centres, state.widths, state.lattice)
            self.viewer.add_points(centres, size=sizes, border_width=0, name=POINTS_NAME, opacity=0.8, visible=False,
                                   scale=state.lattice.napari_scale(), translate=state.lattice.napari_translate())

    def _apply_visibility(self) -> None:
        state = self.state
        colours = part_colours(state.n_parts)
        colours[~self.visible, 3] = 0.0
        self.viewer.layers[LABELS_NAME].colormap = parts_colormap(colours)
        self.viewer.layers[POINTS_NAME].shown = self.visible[state.clustering.part_index]

    def _fill_table(self, colours: np.ndarray) -> None:
        counts = self.state.counts()
        self.table.blockSignals(True)
        self.table.setRowCount(len(counts))
        for k, n in enumerate(counts):
            swatch = QTableWidgetItem()
            # A decoration (not the background) so the colour stays visible when the row is selected.
            swatch.setData(Qt.DecorationRole, QColor.fromRgbF(*colours[k]))
            swatch.setFlags(Qt.ItemIsSelectable | Qt.ItemIsEnabled)
            name = QTableWidgetItem(f"part {k + 1}")
            name.setFlags(Qt.ItemIsSelectable | Qt.ItemIsEnabled)
            count = QTableWidgetItem(str(int(n)))
            count.setFlags(Qt.ItemIsSelectable | Qt.ItemIsEnabled)
            visible = QTableWidgetItem()
            visible.setFlags(Qt.ItemIsSelectable | Qt.ItemIsEnabled | Qt.ItemIsUserCheckable)
            visible.setCheckState(Qt.Checked if self.visible[k] else Qt.Unchecked)
            for col, item in enumerate((swatch, name, count, visible)):
                self.table.setItem(k, col, item)
        self.table.resizeColumnsToContents()
        self.table.blockSignals(False)

    def set_part_visible(self, k: int, visible: bool) -> None:
        """Show or hide part ``k`` (0-based) in both layers (the table's checkbox does this)."""
        self.table.item(k, 3).setCheckState(Qt.Checked if visible else Qt.Unchecked)

    def _item_changed(self, item: QTableWidgetItem) -> None:
        if item.column() == 3 and self.state is not None:
            self.visible[item.row()] = item.checkState() == Qt.Checked
            self._apply_visibility()

    # -- small helpers ---------------------------------------------------------------------------

    def _require(self) -> RunParts | None:
        if self.state is None:
            notifications.show_warning("load a run with discovered parts first")
        return self.state

    @staticmethod
    def _count(spin: QSpinBox) -> str | int:
        return "auto" if spin.value() == 0 else spin.value()

    def selected_parts(self) -> list[int]:
        return sorted({index.row() for index in self.table.selectionModel().selectedRows()})

    def _merge_selected(self) -> None:
        rows = self.selected_parts()
        if len(rows) != 2:
            notifications.show_warning(f"select exactly 2 parts to merge ({len(rows)} selected)")
            return
        self.merge(*rows)

    def _split_selected(self) -> None:
        rows = self.selected_parts()
        if len(rows) != 1:
            notifications.show_warning(f"select exactly 1 part to split ({len(rows)} selected)")
            return
        self.split(rows[0], self.split_k.value())

    def _export_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the part masks")
        if folder:
            self.export_masks(folder)  # refusals and failures become notifications

    def _enable(self) -> None:
        has = self.state is not None
        for w in (self.recluster_button, self.merge_button, self.split_button, self.export_button):
            w.setEnabled(has)
