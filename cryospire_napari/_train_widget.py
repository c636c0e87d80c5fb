"""The train dock: choose particles and an output folder, then train in a worker thread while
the dock shows what it does (the phase, e.g. "stage 2: fitting the seed to stage 1's map (step
120/300)", and its progress bar), the loss of each stage on its own axes, the current map (stage
2's from its newest checkpoint) and (once discovered) the parts.

Buttons: Start (a new run; an existing run is refused, as ``cryospire train`` without
``--resume`` does, with a notification pointing to Resume), Pause (stops within a second in any
phase, leaving a checkpoint or redoing the interrupted seeding on resume), Resume (trains the
same run again: finished stages are skipped, the unfinished one continues from its checkpoint),
Cancel (stops like Pause and returns the dock to idle; the run folder stays resumable). Errors
are one notification in the dock's words (:mod:`._notify`: "the Resume button", not "--resume").
"Stop after part discovery for review" ends the first run after the ``parts`` stage: the Parts
tab then shows the proposed parts for re-clustering, merging and splitting, and "Continue to
stage 2" trains the part-aware model on the edited parts.

Closing the viewer or the dock during training stops the worker at its next step and waits
(up to :data:`SHUTDOWN_WAIT_S`) for its checkpoint, so the run can be resumed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from cryospire_core.imaging.lattice import Lattice
from cryospire_core.io.load import ParticleSource
from cryospire_core.pipeline.profiles import DEFAULT_PROFILE, profile_names
from cryospire_core.pipeline.runfolder import RunFolder

from ._layers import display_levels
from ._notify import notify_error, status_text
from ._parts_widget import PartsWidget
from ._theme import PLOT_COLOURS
from ._workers import (
    CloseWatcher,
    LatestJob,
    TrainJob,
    default_torch_threads,
    disconnect_all,
    dock_request,
    progress_text,
    warm_up,
    warm_up_viewer,
)

if TYPE_CHECKING:  # imported where used: it loads torch, which the dock loads in warm_up
    from cryospire_core.services.training import TrainRequest

#: How often the dock drains progress events (ms) and redraws the loss curve (s).
POLL_MS = 200
PLOT_EVERY_S = 1.0
#: How often the dock looks for a newer map or parts in the run folder (ms).
REFRESH_MS = 3000
#: How long closing the viewer waits for the training thread to checkpoint and stop (s).
SHUTDOWN_WAIT_S = 30.0

PREVIEW_NAME = "current map"
REVIEW_STAGES = ("consensus", "discovery", "parts")


def _watched(root: Path) -> list[Path]:
    """Files whose change means a newer map to show, most advanced first."""
    run = RunFolder(root)
    return [run.checkpoint_path("hierarchical"), run.map_path("discovery"), run.checkpoint_path("discovery"),
            run.map_path("consensus"), run.checkpoint_path("consensus"), run.backprojection_path]


#: What the preview of each stage's newest checkpoint is called.
CHECKPOINT_PREVIEWS = {"hierarchical": "stage 2 (latest checkpoint)", "discovery": "stage 1 (training)",
                       "consensus": "consensus (training)"}


def preview_map(root: str | Path) -> tuple[str, np.ndarray, float] | None:
    """(what, map (D, D, D) float32, apix Å) of the most advanced state of a run in progress:
    stage 2's newest checkpoint at the mean of its latents (written every epoch and every few
    minutes), else stage 1's map, else stage 1's checkpoint at the mean latent (z = 0), else the
    consensus map or checkpoint, else the backprojection; None before any of them exists."""
    import torch

    from cryospire_core.io.mrc import read_map

    run = RunFolder(root)
    training = {run.checkpoint_path(stage): stage for stage in CHECKPOINT_PREVIEWS}
    for path in _watched(run.root):
        if not path.is_file():
            continue
        if path not in training:
            m = read_map(path)
            return f"{path.parent.name} {path.stem}", m.data.astype(np.float32), m.apix
        stage = training[path]
        model = run.latest_checkpoint_model(stage)
        with torch.no_grad():
            if stage == "hierarchical":
                vol = model.volume(model.latents.weight.mean(0))
            elif stage == "discovery":
                vol = model.volume(torch.zeros(model.cfg.zdim))
            else:
                vol = model.volume()
        return CHECKPOINT_PREVIEWS[stage], vol.numpy().astype(np.float32), model.lattice.apix
    return None


class LossPlot(QWidget):
    """The training loss per step, one axes per stage stacked top to bottom, each with its own
    y-axis and a legend naming the stage and its latest loss (matplotlib in Qt): the consensus's
    loss (~7.6 on the demo) and the latent stages' (~0.93) differ too much to share one axis.

    Lines are updated in place (re-plotting the axes each time cost up to 0.3 s on a busy
    machine); the axes are rebuilt only when a stage starts.
    """

    def __init__(self) -> None:
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 2.6), dpi=90, layout="constrained", facecolor=PLOT_COLOURS["figure"])
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.losses: dict[str, list[float]] = {}
        self.axes: dict[str, object] = {}
        self._lines: dict = {}
        self._legends: dict = {}
        self._empty()

    def _empty(self) -> None:
        ax = self.figure.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "the loss of each stage appears here", ha="center", va="center", fontsize=8,
                color=PLOT_COLOURS["muted"])

    def clear(self) -> None:
        self.losses = {}
        self._rebuild()
        self.canvas.draw_idle()

    def add(self, stage: str, loss: float) -> None:
        self.losses.setdefault(stage, []).append(loss)

    def _rebuild(self) -> None:
        """One axes per stage in :attr:`losses` (in the order they started), colours by order."""
        self.figure.clear()
        self.axes, self._lines, self._legends = {}, {}, {}
        if not self.losses:
            self._empty()
            return
        axes = self.figure.subplots(len(self.losses), 1, squeeze=False)[:, 0]
        text = PLOT_COLOURS["text"]
        for k, (stage, ax) in enumerate(zip(self.losses, axes)):
            (self._lines[stage],) = ax.plot([], [], lw=1, color=f"C{k}", label=stage)
            ax.set_facecolor(PLOT_COLOURS["axes"])
            ax.set_ylabel("loss", fontsize=7, color=text)
            ax.tick_params(labelsize=6, colors=text)
            for spine in ax.spines.values():
                spine.set_color(PLOT_COLOURS["muted"])
            legend = ax.legend(fontsize=7, loc="upper right", handlelength=1.2, borderaxespad=0.2,
                               facecolor=PLOT_COLOURS["figure"], edgecolor=PLOT_COLOURS["muted"], labelcolor=text)
            self._legends[stage], self.axes[stage] = legend, ax
        axes[-1].set_xlabel("step of the stage", fontsize=7, color=text)

    def redraw(self) -> None:
        if list(self.losses) != list(self.axes):
            self._rebuild()
        for stage, values in self.losses.items():
            self._lines[stage].set_data(np.arange(1, len(values) + 1), values)
            if values:
                self._legends[stage].get_texts()[0].set_text(f"{stage}: {values[-1]:.4g}")
            ax = self.axes[stage]
            ax.relim()
            ax.autoscale_view()
        self.canvas.draw_idle()


class TrainWidget(QWidget):
    """Dock: train a run (see the module docstring).

    Attributes tests and scripts may set before :meth:`start`: ``config`` (a TrainConfig used
    for a new run instead of the profile's) and ``torch_threads`` (intra-op threads of the
    training thread; default :func:`default_torch_threads`).
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.config = None
        self.torch_threads: int | None = default_torch_threads()
        self.job: TrainJob | None = None
        self.last_status: str | None = None
        self._paused = False
        self._last_plot = 0.0
        self._signature: tuple = ()
        self.preview_job = LatestJob()
        warm_up()
        warm_up_viewer(napari_viewer)

        # -- inputs
        self.source = QComboBox()
        self.source.addItems(["star / cs", "stack + poses.pkl + ctf.pkl"])
        self.particles = self._path_row("particles (.star, .cs or stack)", "Particles (*.star *.cs *.mrcs *.mrc *.txt)")
        self.poses = self._path_row("cryoDRGN poses.pkl", "Pickles (*.pkl)")
        self.ctf = self._path_row("cryoDRGN ctf.pkl", "Pickles (*.pkl)")
        self.out = self._path_row("output run folder", None)
        self.profile = QComboBox()
        self.profile.addItems(profile_names())
        self.profile.setCurrentText(DEFAULT_PROFILE)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.review = QCheckBox("stop after part discovery for review")
        form = QFormLayout()
        form.addRow("source", self.source)
        form.addRow("particles", self.particles.row)
        form.addRow("poses", self.poses.row)
        form.addRow("ctf", self.ctf.row)
        form.addRow("output", self.out.row)
        form.addRow("profile", self.profile)
        form.addRow("device", self.device)
        self._form = form
        self.source.currentIndexChanged.connect(self._source_changed)

        # -- controls
        self.start_button = QPushButton("Start")
        self.pause_button = QPushButton("Pause")
        self.cancel_button = QPushButton("Cancel")
        self.resume_button = QPushButton("Resume")
        self.continue_button = QPushButton("Continue to stage 2")
        self.start_button.clicked.connect(lambda: self.start())
        self.pause_button.clicked.connect(self.pause)
        self.cancel_button.clicked.connect(self.cancel)
        self.resume_button.clicked.connect(lambda: self.resume())
        self.continue_button.clicked.connect(self.continue_to_stage2)
        buttons = QHBoxLayout()
        for b in (self.start_button, self.pause_button, self.cancel_button, self.resume_button):
            buttons.addWidget(b)
        self.out.edit.textChanged.connect(self._enable)

        self.stage_label = QLabel("idle")
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.status = QLabel("choose particles and an output folder")
        self.status.setWordWrap(True)
        self.plot = LossPlot()

        train_tab = QWidget()
        t = QVBoxLayout(train_tab)
        t.addLayout(form)
        t.addWidget(self.review)
        t.addLayout(buttons)
        t.addWidget(self.stage_label)
        t.addWidget(self.bar)
        t.addWidget(self.status)
        t.addWidget(self.plot, 1)  # the plot takes the spare height
        self.parts = PartsWidget(napari_viewer, follow=False)  # the run it trains, not the one opened
        parts_tab = QWidget()
        p = QVBoxLayout(parts_tab)
        p.addWidget(self.parts)
        p.addWidget(self.continue_button)
        self.tabs = QTabWidget()
        self.tabs.addTab(train_tab, "Train")
        self.tabs.addTab(parts_tab, "Parts review")
        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs)

        self.poll_timer = QTimer(self)
        self.poll_timer.setInterval(POLL_MS)
        self.poll_timer.timeout.connect(self._poll)
        self.refresh_timer = QTimer(self)
        self.refresh_timer.setInterval(REFRESH_MS)
        self.refresh_timer.timeout.connect(self.refresh_layers)

        self._close_watcher = CloseWatcher(self, self.shutdown)
        self._source_changed()
        self._enable()

    # -- form ----------------------------------------------------------------------------------

    class _PathRow:
        def __init__(self, edit: QLineEdit, row: QWidget) -> None:
            self.edit, self.row = edit, row

        def path(self) -> Path | None:
            text = self.edit.text().strip()
            return Path(text).expanduser() if text else None

    def _path_row(self, placeholder: str, file_filter: str | None) -> _PathRow:
        edit = QLineEdit()
        edit.setPlaceholderText(placeholder)
        button = QPushButton("...")
        button.setMaximumWidth(32)
        row = QWidget()
        h = QHBoxLayout(row)
        h.setContentsMargins(0, 0, 0, 0)
        h.addWidget(edit)
        h.addWidget(button)

        def browse() -> None:
            if file_filter is None:
                path = QFileDialog.getExistingDirectory(self, placeholder)
            else:
                path, _ = QFileDialog.getOpenFileName(self, placeholder, "", file_filter)
            if path:
                edit.setText(path)

        button.clicked.connect(browse)
        return self._PathRow(edit, row)

    def _source_changed(self) -> None:
        stack = self.source.currentIndex() == 1
        for row in (self.poses, self.ctf):  # QFormLayout.setRowVisible needs Qt >= 6.4
            row.row.setVisible(stack)
            self._form.labelForField(row.row).setVisible(stack)

    def request(self, resume: bool, stages: tuple[str, ...]) -> TrainRequest:
        """The form as a request to train ``stages`` (particles and output are required); a run
        without a saved config takes :attr:`config`, else the chosen profile's."""
        from cryospire_core.errors import InputError
        from cryospire_core.pipeline.config import TrainConfig

        particles, out = self.particles.path(), self.out.path()
        if particles is None:
            raise InputError("Train dock", "particles", "a .star, .cs or image stack file", "nothing chosen")
        if out is None:
            raise InputError("Train dock", "output", "a run folder", "nothing chosen")
        stack = self.source.currentIndex() == 1
        config = self.config if self.config is not None else TrainConfig.for_profile(self.profile.currentText())
        source = ParticleSource(particles, poses=self.poses.path() if stack else None,
                                ctf=self.ctf.path() if stack else None)
        return dock_request(source, out, resume=resume, gui="napari train dock", torch_threads=self.torch_threads,
                            config=config, stages=stages, device=self.device.currentText())

    # -- actions -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.job is not None

    def start(self) -> None:
        """Train a new run into the output folder."""
        self._launch(resume=False)

    def resume(self) -> None:
        """Continue the run in the output folder (after Pause, Cancel, a crash or in a new session)."""
        self._launch(resume=True)

    def continue_to_stage2(self) -> None:
        """After the review: train the part-aware model on the (edited) parts."""
        self._launch(resume=True, stages=("hierarchical",))

    def pause(self) -> None:
        if self.job is not None:
            self._paused = True
            self.job.stop()
            self.status.setText("pausing (within a second)...")

    def cancel(self) -> None:
        if self.job is not None:
            self._paused = False
            self.job.stop()
            self.status.setText("cancelling (within a second)...")

    def _stages(self, resume: bool) -> tuple[str, ...]:
        from cryospire_core.pipeline.config import STAGES

        out = self.out.path()
        reviewed = out is not None and resume and RunFolder(out).stage_done("parts")
        return REVIEW_STAGES if self.review.isChecked() and not reviewed else STAGES

    def _launch(self, resume: bool, stages: tuple[str, ...] | None = None) -> None:
        if self.job is not None:
            return
        try:
            request = self.request(resume, stages or self._stages(resume))
        except Exception as exc:  # an InputError from the form
            notify_error(exc, "starting training")
            return
        self.job = TrainJob(request, self._finished, self._failed)
        self._paused = False
        self._signature = ()
        self.last_status = None
        if not resume:
            self.plot.clear()
        self.bar.setValue(0)
        self.stage_label.setText("starting...")
        self.status.setText(f"training {', '.join(request.stages)} into {request.out}")
        self.tabs.setCurrentIndex(0)
        self.job.worker.finished.connect(self._job_ended)
        self.job.start()
        self.poll_timer.start()
        self.refresh_timer.start()
        self._enable()

    # -- worker callbacks (GUI thread) -----------------------------------------------------------

    def _finished(self, status: str) -> None:
        self._poll()  # the last events first, so the final text below stays
        self.last_status = status
        job = self.job
        if status == "cancelled":
            what = "paused" if self._paused else "cancelled"
            if RunFolder(job.request.out).config_path.is_file():
                self.status.setText(f"{what}: the run in {job.request.out} resumes with Resume")
            else:  # stopped while the particles were read and checked
                self.status.setText(f"{what} before the run started: nothing was written to {job.request.out}")
            self.stage_label.setText(what)
        elif job.request.stages == REVIEW_STAGES:
            self.status.setText("part discovery finished: review the parts, then Continue to stage 2")
            self.stage_label.setText("review the parts")
            self.tabs.setCurrentIndex(1)
        else:
            self.status.setText(f"training finished: {job.request.out}")
            self.bar.setValue(self.bar.maximum())
            self.stage_label.setText("finished")

    def _failed(self, exc: BaseException) -> None:
        self._poll()
        self.last_status = "error"
        notify_error(exc, "training")
        self.status.setText(status_text(exc, "training"))
        self.stage_label.setText("error")

    def _job_ended(self) -> None:
        self.job = None
        self.poll_timer.stop()
        self.refresh_timer.stop()
        self.plot.redraw()
        self.refresh_layers()
        self._enable()

    def _poll(self) -> None:
        """Drain the training's progress events into the bar and the loss curve."""
        if self.job is None:
            return
        events = self.job.monitor.drain()
        for e in events:
            if e.loss is not None:
                self.plot.add(e.stage, e.loss)
        if events:
            e = events[-1]
            self.bar.setMaximum(max(e.total, 1))
            self.bar.setValue(min(e.done, e.total))
            self.stage_label.setText(progress_text(e))
        now = time.monotonic()
        if events and now - self._last_plot > PLOT_EVERY_S:
            self._last_plot = now
            self.plot.redraw()

    def refresh_layers(self) -> None:
        """Show a newer map or newer parts of the run, if the run folder has them (in the
        background; at most one pending)."""
        out = self.out.path()
        if out is None:
            return
        files = [*_watched(out), RunFolder(out).clustering_path]
        signature = tuple(p.stat().st_mtime_ns if p.is_file() else 0 for p in files)
        if signature == self._signature:
            return
        parts_changed = not self._signature or signature[-1] != self._signature[-1]
        self._signature = signature
        self.preview_job.submit(lambda: preview_map(out), self._show_preview, "showing the current map")
        if parts_changed and signature[-1]:
            self.parts.load_run(out)

    def _show_preview(self, result: tuple[str, np.ndarray, float] | None) -> None:
        if result is None:
            return
        what, vol, apix = result
        limits, level = display_levels(vol)
        if PREVIEW_NAME in self.viewer.layers and self.viewer.layers[PREVIEW_NAME].data.shape == vol.shape:
            layer = self.viewer.layers[PREVIEW_NAME]
            layer.data = vol
            layer.contrast_limits = limits
            layer.iso_threshold = level
        else:
            if PREVIEW_NAME in self.viewer.layers:
                self.viewer.layers.remove(PREVIEW_NAME)
            lattice = Lattice(vol.shape[0], apix)
            layer = self.viewer.add_image(vol, name=PREVIEW_NAME, scale=lattice.napari_scale(),
                                          translate=lattice.napari_translate(), contrast_limits=limits,
                                          rendering="mip", colormap="gray", blending="additive")
        layer.metadata.update({"apix": apix, "what": what})

    def _enable(self) -> None:
        running = self.job is not None
        out = self.out.path()
        run = RunFolder(out) if out is not None else None
        has_run = run is not None and run.config_path.is_file()
        self.start_button.setEnabled(not running)
        self.resume_button.setEnabled(not running and has_run)
        self.pause_button.setEnabled(running)
        self.cancel_button.setEnabled(running)
        reviewing = has_run and run.stage_done("parts") and not run.stage_done("hierarchical")
        self.continue_button.setEnabled(not running and reviewing)

    # -- shutdown --------------------------------------------------------------------------------

    def shutdown(self, timeout: float = SHUTDOWN_WAIT_S) -> None:
        """Stop a running training at its next step and wait for its checkpoint (the viewer or
        the dock is closing)."""
        self.poll_timer.stop()
        self.refresh_timer.stop()
        self.preview_job.cancel()
        self.parts.shutdown()
        job, self.job = self.job, None
        if job is not None:
            # Qt deletes this widget next: the job's result must not reach it.
            disconnect_all(job.worker.returned)
            disconnect_all(job.worker.finished)
            job.stop()
            job.wait(timeout)

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)
