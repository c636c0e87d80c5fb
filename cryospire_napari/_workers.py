"""Background work for the docks: the training job, coalesced short jobs, and error reporting.

One long-lived worker trains (napari's thread pool has as many threads as cores, 2 here, so
the docks never start a second long one); everything else (re-clustering, label maps, map
previews) goes through :class:`LatestJob`, which keeps at most one job running and one pending
and drops stale requests (latest wins). Layers are touched only in the callbacks, which napari
runs on the GUI thread.

A job never raises into napari: its exception comes back as a :class:`Failure` (napari would
report it a second time, as a bare traceback), goes to the dock's error callback, and becomes
one notification in the plugin's words (:mod:`._notify`); the dock then restores its buttons
and labels.

The training thread never talks to Qt: progress events go into a :class:`TrainMonitor`
(a locked list) that the dock drains on a timer, so a fast training loop cannot flood the
event loop with signals.
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import QEvent, QObject

from cryospire_core.pipeline.threads import ThreadBudget, thread_budget
from cryospire_core.progress import Cancelled, ProgressEvent

from ._notify import notify_error

if TYPE_CHECKING:  # imported where used: they load torch, which the docks load in warm_up
    from cryospire_core.io.load import ParticleSource
    from cryospire_core.services.training import TrainRequest


@dataclass(frozen=True)
class Failure:
    """What a job returns instead of raising: napari would otherwise report the exception a
    second time (and re-raise it in the event loop when no error handler is connected)."""

    exc: Exception


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` returning :class:`Failure` instead of raising an Exception."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # reported by the caller's GUI-thread callback
            return Failure(exc)

    return call


def dispatch(on_done: Callable[[Any], None], on_error: Callable[[Exception], None]) -> Callable[[Any], None]:
    """A ``returned`` slot sending a :class:`Failure` to on_error and anything else to on_done;
    an exception raised by on_done (the GUI-thread half of the job) goes to on_error too, so it
    never reaches the event loop as a bare traceback."""

    def slot(result: Any) -> None:
        if isinstance(result, Failure):
            on_error(result.exc)
            return
        try:
            on_done(result)
        except Exception as exc:  # reported like a failure in the thread
            on_error(exc)

    return slot


def warm_up() -> None:
    """Pay once, when a dock opens, the one-off costs that would otherwise freeze the viewer
    while training runs: importing the training code (torch, scipy, scikit-learn: loading their
    compiled libraries holds the GIL, so an import in the worker thread stalls the GUI thread
    too), torch's first optimizer step (~0.7 s of lazy imports, which stalled the viewer right
    after the backprojection), and the first Image, Labels and Points layer objects (lazy imports
    and pint's unit registry, ~0.7 s). All are cached by Python afterwards.
    """
    import torch
    from napari.layers import Image, Labels, Points

    for module in ("cryospire_core.io.load", "cryospire_core.pipeline.train", "cryospire_core.services.training"):
        importlib.import_module(module)
    p = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([p])
    p.sum().backward()
    optimizer.step()

    Image(np.zeros((2, 2, 2), np.float32))
    Labels(np.zeros((2, 2, 2), np.int32))
    Points(np.zeros((1, 3)))


@functools.cache
def warm_up_labels() -> threading.Thread:
    """Start (once per process; the thread is returned) compiling what napari needs to colour a
    uint8 or uint16 labels layer (the part maps, :func:`._layers.label_texture`). Where numba is
    installed (umap-learn brings it) napari compiles a numba function on the first labels
    layer it colours: 2.5-6 s on 2 cores, which froze the viewer as a run opened. Compiled in
    this thread instead, the GUI thread keeps turning (it only waits for the rest of the compile
    if a labels layer comes first)."""

    def compile_mappings() -> None:
        from napari.utils.colormaps import DirectLabelColormap

        colormap = DirectLabelColormap(color_dict={None: np.zeros(4), 0: np.zeros(4), 1: np.ones(4)})
        for dtype in (np.uint8, np.uint16):
            colormap.map(np.zeros(1, dtype))

    thread = threading.Thread(target=compile_mappings, name="cryospire labels warm-up", daemon=True)
    thread.start()
    return thread


def warm_up_viewer(viewer: Any) -> None:
    """Add and remove a tiny Image, Labels and Points layer, so the first-time costs of their
    controls and visuals (classes, shaders: ~0.1 s each here) are paid when the dock opens,
    not when training adds the real layers."""
    for layer in (viewer.add_image(np.zeros((2, 2, 2), np.float32)), viewer.add_labels(np.zeros((2, 2, 2), np.int32)),
                  viewer.add_points(np.zeros((1, 3)))):
        viewer.layers.remove(layer)


# -- training -------------------------------------------------------------------------------------


def default_torch_threads() -> int:
    """Intra-op threads for the training thread: one fewer than the CPUs this process may use
    (:func:`cryospire_core.pipeline.threads.thread_budget`; at least one), so the GUI thread keeps one."""
    return max(1, thread_budget().n - 1)


def dock_request(source: ParticleSource, out: str | Path, *, resume: bool, gui: str,
                 torch_threads: int | None, **fields: Any) -> TrainRequest:
    """A :class:`~cryospire_core.services.training.TrainRequest` as the docks make it: a new start
    over a trained run is refused naming the Resume button, the training thread computes with
    ``torch_threads`` (None: torch's default, one per core; the docks default to
    :func:`default_torch_threads`, benchmarks/gui_stall.py: on 2 cores, 1 thread trained no
    slower than 2 and stalled the viewer no more), and the run's ``train_command`` records the
    dock (``gui``) and the particles. ``fields``: the request's other fields (options, config,
    stages, device)."""
    from cryospire_core.services.training import TrainRequest

    threads = None if torch_threads is None else ThreadBudget(torch_threads, "the dock's training thread")
    command = {"gui": gui, **source.command(), "device": fields.get("device", "auto")}
    return TrainRequest(source=source, out=out, resume=resume, resume_hint="the Resume button",
                        threads=threads, command=command, **fields)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def progress_text(event: ProgressEvent) -> str:
    """One line saying what the training does now: the phase, its epoch or step, and the time
    left, e.g. ``stage 2: fitting the seed to stage 1's map (step 120/400), 01:10 left`` or
    ``stage 1: part discovery, epoch 3/10, 04:12 left``; a phase of one piece of work
    (``parts: clustering the Gaussians into parts...``) has no count and no time."""
    if event.epochs:
        return f"{event.stage}, epoch {event.epoch}/{event.epochs}, {_clock(event.eta)} left"
    if event.total <= 1:
        return f"{event.stage}..."
    count = f"{event.unit} {event.done}/{event.total}" if event.unit else f"{event.done}/{event.total}"
    return f"{event.stage} ({count}), {_clock(event.eta)} left"


@dataclass
class TrainMonitor:
    """Shared between the training thread (writes) and the GUI (reads, on a timer)."""

    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    _events: list[ProgressEvent] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            self._events.append(event)

    def drain(self) -> list[ProgressEvent]:
        """Events since the last call, oldest first."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def should_stop(self) -> bool:
        return self.stop.is_set()


def run_training(request: TrainRequest, monitor: TrainMonitor) -> str:
    """Train ``request.stages`` into ``request.out`` exactly as ``cryospire train`` does (the same
    start-up checks, run layout, config sections, lock and resume rules:
    :func:`~cryospire_core.services.training.training_run`); returns ``finished`` or
    ``cancelled``. Runs in the worker thread; once ``monitor.stop`` is set it stops within about
    a second whatever it is doing (reading the particles, seeding, clustering, a training step:
    :mod:`cryospire_core.progress`), leaving what a later request with ``resume=True``
    continues from."""
    from cryospire_core.services.training import training_run

    try:
        with training_run(request, progress=monitor, should_stop=monitor.should_stop) as prepared:
            return prepared.train(progress=monitor, should_stop=monitor.should_stop)
    except Cancelled:  # before the run's stages started (reading and checking the particles)
        return "cancelled"
    finally:
        monitor.done.set()


class TrainJob:
    """One training run in a napari thread worker.

    on_done(status) and on_error(exc) run on the GUI thread (an exception in the thread reaches
    on_error only, see :class:`Failure`). ``stop()`` asks the loop to
    checkpoint and return at its next step; ``wait(timeout)`` blocks until the thread is out of
    :func:`run_training` (the run's lock released).
    """

    def __init__(self, request: TrainRequest, on_done: Callable[[str], None],
                 on_error: Callable[[BaseException], None]) -> None:
        self.request = request
        self.monitor = TrainMonitor()
        self.worker = create_worker(guarded(run_training), request, self.monitor, _start_thread=False,
                                    _connect={"returned": dispatch(on_done, on_error)})

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.monitor.stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.monitor.done.wait(timeout)


def disconnect_all(signal) -> None:
    """Disconnect every slot of a Qt signal (none connected is fine)."""
    try:
        signal.disconnect()
    except (TypeError, RuntimeError):
        pass


class CloseWatcher(QObject):
    """Calls ``on_close()`` when ``widget`` or any widget holding it (its dock, the napari main
    window) is about to close, or when the widget is taken out of its dock.

    napari has no public "viewer closing" event, so this follows Qt: it filters the Close
    events of the widget's ancestors, and follows re-parenting (a dock widget is built first,
    then put in a dock, then the dock in the main window). Docks use it to stop their workers
    before Qt deletes them.
    """

    def __init__(self, widget: Any, on_close: Callable[[], None]) -> None:
        super().__init__(widget)
        self._widget = widget
        self._on_close = on_close
        self._docked = widget.parentWidget() is not None
        self._watch_ancestors()

    def _watch_ancestors(self) -> None:
        # Installing twice is a no-op in Qt. No references are kept: holding the main window
        # from a dock widget would keep napari's viewer alive after it closes.
        w = self._widget
        while w is not None:
            w.installEventFilter(self)
            w = w.parentWidget()

    def eventFilter(self, obj: Any, event: Any) -> bool:
        if event.type() == QEvent.ParentChange:
            if obj is self._widget and self._widget.parentWidget() is None and self._docked:
                self._on_close()  # napari's remove_dock_widget un-parents the widget
            self._docked = self._widget.parentWidget() is not None
            self._watch_ancestors()
        elif event.type() == QEvent.Close:
            self._on_close()
        return False


# -- short jobs -----------------------------------------------------------------------------------


class LatestJob:
    """Runs short jobs one at a time in a worker thread; a job submitted while one runs waits,
    replacing any job already waiting (latest wins), so rapid clicks never queue up stale work.

    ``submit(fn, on_done, action)``: fn() runs in the worker; on_done(result) on the GUI thread.
    A failure (in fn or in on_done) becomes one notification (:func:`~._notify.notify_error`
    with ``action``, e.g. "loading the parts of run"), then ``on_error(action, exc)`` lets the
    dock put its labels and buttons back.
    """

    def __init__(self, on_error: Callable[[str, Exception], None] | None = None) -> None:
        self._on_error = on_error
        self._pending: tuple[Callable[[], Any], Callable[[Any], None], str] | None = None
        self._worker = None

    @property
    def busy(self) -> bool:
        return self._worker is not None or self._pending is not None

    def cancel(self) -> None:
        """Drop the waiting job and the running job's result (its widget is closing)."""
        self._pending = None
        if self._worker is not None:
            disconnect_all(self._worker.returned)

    def submit(self, fn: Callable[[], Any], on_done: Callable[[Any], None], action: str) -> None:
        self._pending = (fn, on_done, action)
        if self._worker is None:
            self._next()

    def _failed(self, action: str, exc: Exception) -> None:
        notify_error(exc, action)
        if self._on_error is not None:
            self._on_error(action, exc)

    def _next(self) -> None:
        if self._pending is None:
            self._worker = None
            return
        fn, on_done, action = self._pending
        self._pending = None
        report = dispatch(on_done, lambda exc: self._failed(action, exc))
        worker = create_worker(guarded(fn), _start_thread=False, _connect={"returned": report, "finished": self._next})
        self._worker = worker
        worker.start()
