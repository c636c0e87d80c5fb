"""What the latent explorer's action buttons do: export the traversal (an MRC series, a movie:
mp4 or GIF), write the selected particles, and continue training on them; with their file dialogs.

The work itself is the application services' (:mod:`cryospire_core.services`), the same
functions the command line calls; this module checks the explorer's state first, runs the slow
parts in the dock's background job or training worker, and reports in the dock's status line
and in notifications.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from napari.utils import notifications
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog

from cryospire_core.errors import InputError
from cryospire_core.io.chimerax import SCRIPT_NAME
from cryospire_core.io.outputs import GUI_REMEDY
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.services import branch, inputs, select, traverse

from ._movie import MovieRecording
from ._notify import notify_error
from ._workers import TrainJob, default_torch_threads, dock_request, progress_text

if TYPE_CHECKING:
    from ._explorer_widget import ExplorerWidget


class ExplorerActions:
    """The actions of the explorer dock ``dock`` (its session, background job, viewer, status
    line and progress bar); ``train_job`` is the training started here, if it still runs;
    ``movie`` the movie being recorded, if any."""

    def __init__(self, dock: ExplorerWidget) -> None:
        self.dock = dock
        self.session = dock.session
        self.train_job: TrainJob | None = None
        self.movie: MovieRecording | None = None
        self._movie_button_text = ""
        self._timer = QTimer(dock)
        self._timer.timeout.connect(self._poll_training)

    @property
    def busy(self) -> bool:
        """A movie is being recorded or written."""
        return self.movie is not None and self.movie.busy

    def shutdown(self) -> None:
        """Stop the training started here and the movie being recorded (the dock is closing)."""
        if self.train_job is not None:
            self.train_job.stop()
        if self.movie is not None:
            self.movie.close()
            self.movie = None

    # -- the traversal -----------------------------------------------------------------------------

    def export_series(self, folder: str | Path, overwrite: bool = False) -> None:
        """Write the traversal's maps as folder/vol_###.mrc (+ latents.npy, parts.csv, README.txt
        and the ChimeraX script open_in_chimerax.cxc; in the background). Files already in
        ``folder`` with those names are refused (a notification) unless ``overwrite``."""
        e, trav = self.session.explorer, self.session.traversal
        if trav is None:
            notifications.show_warning("compute a traversal first")
            return
        try:  # before any map is computed
            traverse.check_map_series(folder, len(trav), True, bool(trav.readouts), overwrite, GUI_REMEDY)
        except InputError as exc:
            notify_error(exc, f"writing the maps to {folder}")
            return

        box = self.session.map_box  # the maps as shown

        def run():
            return traverse.export_traversal(e, trav, folder, overwrite, GUI_REMEDY, box)

        self.dock.status.setText(f"writing {len(trav)} maps to {folder}...")
        self.dock.side_job.submit(run, lambda paths: self.dock.status.setText(
            f"wrote {len(paths)} maps; ChimeraX: open {Path(folder) / SCRIPT_NAME}"),
            f"writing the maps to {folder}")

    def export_movie(self, path: str | Path, fps: float = 8.0) -> None:
        """Record the traversal as a movie of the viewer's canvas into ``path`` (``.mp4``: H.264;
        ``.gif``: looping) at ``fps`` frames per second, and return at once.

        Each step is shown in the viewer and screenshotted, its map decoded in the background
        and the file written there at the end (:class:`~._movie.MovieRecording`); the status line
        counts the frames, and the Export movie button turns into Cancel movie
        (Play, a new traversal or run also cancel it; nothing is written then). ``busy`` is
        True until the file is written. A file name without .mp4 or .gif is refused with a
        notification before anything is recorded."""
        session, dock = self.session, self.dock
        if session.traversal is None:
            notifications.show_warning("compute a traversal first")
            return
        if self.movie is not None:
            notifications.show_warning("a movie is being recorded: cancel it first")
            return
        try:
            path = traverse.check_movie_path(path)
        except InputError as exc:
            notify_error(exc, f"exporting the movie to {path}")
            return
        session.stop()
        self.movie = MovieRecording(dock, path, fps, self._movie_ended)
        self._movie_button_text = dock.export_movie_button.text()
        dock.export_movie_button.setText("Cancel movie")
        self.movie.start()

    def _movie_ended(self) -> None:
        """The movie was written, failed or was cancelled: the button exports again."""
        self.movie = None
        self.dock.export_movie_button.setText(self._movie_button_text)

    # -- the selection ------------------------------------------------------------------------------

    def write_selection(self, path: str | Path, overwrite: bool = False) -> tuple[Path, Path] | None:
        """Write the selection as a .star/.cs subset of the run's particles plus an index file
        (either file existing is refused with a notification unless ``overwrite``)."""
        e = self.session.explorer
        if e is None or not self.session.selected.any():
            notifications.show_warning("select particles first (lasso or a state)")
            return None
        if e.particles is None:
            notifications.show_warning("the run's particle file was not found: choose it at the top of the dock")
            return None
        try:
            out = select.write_selection(path, self.session.selected_particles(), e.particles, overwrite=overwrite)
        except Exception as exc:  # shown to the user; the viewer stays usable
            notify_error(exc, f"writing the selection to {path}")
            return None
        notifications.show_info(f"wrote {int(self.session.selected.sum())} particles to {out[0]} and {out[1].name}")
        return out

    def continue_training(self) -> Path | None:
        """Train stage 2 on the selected particles (the paper's junk removal between stages).

        Before stage 2 starts: the run itself continues with ``select`` set (as
        ``cryospire train --resume --select``). After: a new run folder beside it,
        ``<run>_subset<M>``, reuses the consensus, stage-1 and parts outputs and trains stage 2
        on the subset (:func:`cryospire_core.services.branch.continue_with_selection`). Returns the
        run folder."""
        e, dock = self.session.explorer, self.dock
        if e is None or not self.session.selected.any() or e.root is None or e.particles is None:
            notifications.show_warning("load a run whose particle file exists and select particles first")
            return None
        if self.train_job is not None:
            notifications.show_warning("a training run started here is still going")
            return None
        rows = self.session.selected_particles()
        try:
            out = branch.continue_with_selection(e.root, rows, e.particles)
        except Exception as exc:
            notify_error(exc, "preparing training on the selection")
            return None
        request = dock_request(RunFolder(e.root).particle_source(e.particles), out, resume=True,
                               gui="napari latent explorer", torch_threads=default_torch_threads())
        self.train_job = TrainJob(request, self._trained, self._train_failed)
        self.train_job.start()
        dock.progress.setVisible(True)
        self._timer.start(300)
        dock.status.setText(f"training stage 2 on {len(rows)} particles into {out}")
        return out

    def _poll_training(self) -> None:
        if self.train_job is None:
            return
        progress = self.dock.progress
        for ev in self.train_job.monitor.drain():
            progress.setMaximum(max(1, ev.total))
            progress.setValue(ev.done)
            progress.setFormat(f"{progress_text(ev)} %p%")

    def _trained(self, status: str) -> None:
        out = self.train_job.request.out
        self._timer.stop()
        self.train_job = None
        self.dock.progress.setVisible(False)
        notifications.show_info(f"training {status}: {out}")
        if status == "finished":
            self.dock.load_run(out)

    def _train_failed(self, exc: BaseException) -> None:
        self._timer.stop()
        self.train_job = None
        self.dock.progress.setVisible(False)
        notify_error(exc, "training on the selection")

    # -- the run's particle file ---------------------------------------------------------------------

    def use_particle_file(self, path: str | Path) -> None:
        """Use ``path`` as the loaded run's particle file (the run or its data moved): checked
        against the run and remembered in its config.json in the background
        (:func:`~cryospire_core.services.inputs.use_particle_file`; for this session only when the
        folder cannot be written), then the run is reloaded with it."""
        e = self.session.explorer
        if e is None or e.root is None:
            notifications.show_warning("load a run first")
            return
        root, path = e.root, Path(path)

        def checked(not_remembered: InputError | None) -> None:
            if not_remembered is not None:
                notifications.show_warning(f"using {path} for this session only: {not_remembered}")
            self.dock.load_run(root, path)

        self.dock.status.setText(f"checking {path}...")
        self.dock.side_job.submit(lambda: inputs.use_particle_file(root, path), checked,
                                  f"using the particle file {path}")

    # -- dialogs ------------------------------------------------------------------------------------

    def export_series_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.dock, "Folder for the traversal maps")
        if folder:
            self.export_series(folder)

    def export_movie_dialog(self) -> None:
        """Ask for the movie's file (mp4 first, or GIF) and record it; while a movie is being
        recorded the button cancels it instead."""
        if self.movie is not None:
            self.movie.cancel()
            return
        path, chosen = QFileDialog.getSaveFileName(self.dock, "Traversal movie", "traversal.mp4",
                                                   "MP4 (*.mp4);;GIF (*.gif)")
        if path:
            if not Path(path).suffix:  # the filter chosen says which (some platforms' dialogs add none)
                path += ".gif" if chosen.startswith("GIF") else ".mp4"
            self.export_movie(path)

    def write_dialog(self) -> None:
        # No "replace?" question from Qt: it would cover only one of the two files written, and
        # write_selection refuses either existing one with a notification.
        path, _ = QFileDialog.getSaveFileName(self.dock, "Selected particles", "selection.star",
                                              "Particles (*.star *.cs)", options=QFileDialog.DontConfirmOverwrite)
        if path:
            self.write_selection(path)
