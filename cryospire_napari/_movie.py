"""Recording a traversal as a movie of the viewer's canvas, without stalling the viewer.

What the user sees is what gets recorded: each step's map (and part labels when the dock shows
them) is put into the viewer's layers and the canvas is screenshotted. The slow parts stay off
the GUI thread or are split across turns of the event loop:

- the maps are decoded in a worker (a :class:`~._workers.LatestJob` of the recording's own: a
  job the dock submits meanwhile cannot replace it), one step ahead of the step shown;
- a step is shown in one turn of the event loop (``dock.show_frame``) and screenshotted in the
  next (``QTimer.singleShot(0)``), so the viewer keeps drawing and answering the mouse between;
- the frames are encoded and written (atomically) in the worker once every step is recorded.

The dock's status line says ``movie: frame 7 of 20...`` (not its progress bar: QProgressBar
repaints synchronously on every value, ~0.1 s with software OpenGL); the cursor stays where it
is, and the viewer shows the map at the cursor again once the frames are recorded.
:meth:`MovieRecording.cancel` (the dock's Cancel movie button, Play, a new traversal or run) and
:meth:`MovieRecording.close` (the dock closing) stop it at once and nothing is written; once
every frame is recorded the file is written whatever happens.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer

from cryospire_core.services import traverse

from ._notify import status_text
from ._workers import LatestJob

if TYPE_CHECKING:
    from cryospire_core.analysis.explorer import Frame

    from ._explorer_widget import ExplorerWidget


class MovieRecording:
    """One movie of the traversal ``dock.session.traversal`` into ``path`` (.mp4 or .gif, already
    checked) at ``fps``; ``on_end()`` runs on the GUI thread when it is written, failed or was
    cancelled. Call :meth:`start` once."""

    def __init__(self, dock: ExplorerWidget, path: Path, fps: float, on_end: Callable[[], None]) -> None:
        session = dock.session
        self.dock, self.path, self.fps, self._on_end = dock, path, fps, on_end
        self.explorer, self.traversal = session.explorer, session.traversal
        self.labels = dock.show_labels.isChecked() and self.explorer.n_parts > 0
        self.box = session.map_box
        self.frames: list[np.ndarray] = []  # screenshots, one per step recorded
        self.ended = False
        self._job = LatestJob(self._failed)
        self._ready: dict[int, Frame] = {}  # decoded steps not shown yet
        self._next = 0  # the next step to decode
        self._decoding = False
        self._shown: int | None = None  # the step in the viewer, waiting for its screenshot
        self._writing = False

    @property
    def n(self) -> int:
        return len(self.traversal)

    @property
    def busy(self) -> bool:
        """Recording or writing, or its worker still finishing a decode after a cancel."""
        return not self.ended or self._job.busy

    def start(self) -> None:
        ev = self.dock.session.events
        ev.playing_changed.connect(self._on_playing)
        ev.traversal_changed.connect(self._interrupted)
        ev.loaded.connect(self._interrupted)
        self._say(f"movie: frame 1 of {self.n}...")
        self._pump()

    def cancel(self) -> None:
        """Stop recording and write nothing (a no-op once the frames are being written: the
        file is then written whole, through a temporary file)."""
        if self.ended or self._writing:
            return
        self._job.cancel()
        if self.frames or self._shown is not None:
            self._show_cursor()
        self._end(f"movie cancelled after {len(self.frames)} of {self.n} frames: nothing written")

    def close(self) -> None:
        """The dock is closing: stop at once without touching its widgets (a file being written
        is still written whole, in the worker)."""
        if not self.ended:
            self._job.cancel()
            self._end(None)

    # -- the steps ---------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Do whatever can be done now: decode the next step (at most one step ahead of the one
        shown), show the next decoded step, write the movie when every step is recorded."""
        if self.ended:
            return
        if not self._decoding and self._next < self.n and self._next <= len(self.frames) + 1:
            self._decode(self._next)
        step = len(self.frames)
        if self._shown is None and step in self._ready:
            self._show(step, self._ready.pop(step))
        if len(self.frames) == self.n and not self._writing:
            self._write()

    def _decode(self, i: int) -> None:
        """Decode step ``i`` in the worker."""
        e, z, labels, box = self.explorer, self.traversal.latents[i], self.labels, self.box
        self._next = i + 1
        self._decoding = True
        self._job.submit(lambda: e.frame(z, labels=labels, box=box), lambda frame: self._decoded(i, frame),
                         f"rendering step {i + 1} of the movie")

    def _decoded(self, i: int, frame: Frame) -> None:
        self._decoding = False
        self._ready[i] = frame
        self._pump()

    def _show(self, i: int, frame: Frame) -> None:
        """Put step ``i`` in the viewer (its map and labels); its screenshot is taken in the next
        turn of the event loop. The scatter's cursor and the readout plot's mark stay where the
        user left them: redrawing them at every step more than doubled each step's stall (the
        plot's matplotlib draw alone takes ~0.6 s here)."""
        self.dock.show_frame(frame)
        self._shown = i
        QTimer.singleShot(0, self._capture)

    def _show_cursor(self) -> None:
        """The steps recorded are done with: the viewer shows the map at the cursor again."""
        cursor = self.dock.session.cursor
        if cursor is not None:
            self.dock.show_latent(cursor.z)

    def _capture(self) -> None:
        if self.ended:
            return
        self.frames.append(self.dock.viewer.screenshot(canvas_only=True, flash=False))
        self._shown = None
        done = len(self.frames)
        if done < self.n:
            self._say(f"movie: frame {done + 1} of {self.n}...")
        QTimer.singleShot(0, self._pump)  # the next step in a turn of its own

    # -- the file ------------------------------------------------------------------------------------

    def _write(self) -> None:
        self._writing = True
        self._show_cursor()
        self._say(f"movie: writing {self.path} ({self.n} frames)...")
        path, frames, fps = self.path, self.frames, self.fps
        self._job.submit(lambda: traverse.write_movie(path, frames, fps), self._written,
                         f"writing the movie {path}")

    def _written(self, out: Path) -> None:
        self._end(f"wrote {out} ({self.n} frames)")

    def _failed(self, action: str, exc: Exception) -> None:
        """A decode or the write failed (already notified): end, saying so."""
        if not self.ended:
            self._end(status_text(exc, action))

    # -- ending --------------------------------------------------------------------------------------

    def _on_playing(self, on: bool) -> None:
        if on:  # Play drives the same layers: the recording would show its steps
            self._interrupted()

    def _interrupted(self, *_: object) -> None:
        self.cancel()

    def _end(self, message: str | None) -> None:
        """Stop listening to the session, say ``message`` (None: the dock is closing, say
        nothing) and hand back to the dock."""
        self.ended = True
        self.frames = []
        self._ready.clear()
        ev = self.dock.session.events
        ev.playing_changed.disconnect(self._on_playing)
        ev.traversal_changed.disconnect(self._interrupted)
        ev.loaded.disconnect(self._interrupted)
        if message is not None:
            self._say(message)
            self._on_end()

    def _say(self, text: str) -> None:
        self.dock.status.setText(text)
