"""Progress events and cancellation: the core reports long work through small typed events, and
stops it when its caller asks.

The command line turns the events into a terminal progress bar; the napari plugin turns them
into napari progress bars and layer updates. Nothing here knows about either.

Cancelling: long work takes a ``should_stop()`` callable (cheap: the dock's is a
``threading.Event.is_set``) and asks it between units of work, at least every ~0.2 s of work:
the training loop between steps (it then checkpoints and returns ``cancelled``), every other
phase through :class:`Phase` (a loop of its own) or :func:`interruptible` (one long library
call), which raise :class:`Cancelled` before anything of the unfinished phase is written, so
the run resumes as if the phase had not started.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar


@dataclass(frozen=True)
class ProgressEvent:
    """One step of long work.

    stage: what runs (``simulate``, ``backproject``, ``consensus``...); done/total: units of work
    (images, steps); epoch/epochs: for training (0 when not applicable); loss: latest training
    loss or None; elapsed/eta: seconds.
    """

    stage: str
    done: int
    total: int
    epoch: int = 0
    epochs: int = 0
    loss: float | None = None
    elapsed: float = 0.0
    eta: float | None = None
    unit: str = ""
    """What ``done`` counts (``step``, ``image``...) where a reader shows it; empty: unnamed."""


ProgressCallback = Callable[[ProgressEvent], None]
StopCheck = Callable[[], bool]
T = TypeVar("T")


class Cancelled(Exception):
    """Long work stopped because its caller's ``should_stop()`` answered True. Raised between
    units of work, before the phase wrote anything; :func:`cryospire_core.pipeline.train.train`
    turns it into the status ``cancelled``."""


def check_stop(should_stop: StopCheck | None) -> None:
    """Raise :class:`Cancelled` when ``should_stop`` (None: never) answers True."""
    if should_stop is not None and should_stop():
        raise Cancelled()


@dataclass
class Phase:
    """One phase of long work outside the training loop (a map fit, a backprojection, reading a
    sample of images), named for the user: ``stage`` (e.g. ``stage 2: fitting the seed to stage
    1's map``), ``total`` units of ``unit``.

    :meth:`step` reports ``done`` units (with the time elapsed and left) and then raises
    :class:`Cancelled` if ``should_stop()`` answers True; call it with 0 when the phase starts
    (the reader's bar and label follow the phase at once) and after each unit.
    """

    stage: str
    total: int
    progress: ProgressCallback | None = None
    should_stop: StopCheck | None = None
    unit: str = "step"
    _t0: float = field(default_factory=time.monotonic, init=False, repr=False)

    def step(self, done: int) -> None:
        if self.progress is not None:
            elapsed = time.monotonic() - self._t0
            eta = elapsed * (self.total - done) / done if done else None
            self.progress(ProgressEvent(self.stage, done, self.total, elapsed=elapsed, eta=eta, unit=self.unit))
        check_stop(self.should_stop)


def interruptible(fn: Callable[[], T], should_stop: StopCheck | None, poll_s: float = 0.05) -> T:
    """``fn()``: one long call that cannot ask ``should_stop`` itself (a LAPACK SVD, a
    scikit-learn k-means), run in a helper thread while this one asks ``should_stop`` every
    ``poll_s`` seconds. Raises :class:`Cancelled` as soon as it answers True; the call then runs
    to its end in the background and its result is dropped, so ``fn`` must write nothing (pass
    pure computations). Without ``should_stop`` it is a plain call. Exceptions of ``fn`` are
    raised here."""
    if should_stop is None:
        return fn()
    result: dict[str, object] = {}
    finished = threading.Event()

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = exc
        finally:
            finished.set()

    threading.Thread(target=target, name="cryospire-interruptible", daemon=True).start()
    while not finished.wait(poll_s):
        check_stop(should_stop)
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]


class TerminalProgress:
    """A callable that draws ProgressEvents as tqdm bars, one bar per stage."""

    def __init__(self, disable: bool = False) -> None:
        self._bar = None
        self._stage = None
        self._disable = disable

    def __call__(self, event: ProgressEvent) -> None:
        from tqdm.auto import tqdm

        if event.stage != self._stage or self._bar is None:
            self.close()
            self._stage = event.stage
            unit = event.unit or ("img" if not event.epochs else "step")
            self._bar = tqdm(total=event.total, desc=event.stage, unit=unit,
                             disable=self._disable, dynamic_ncols=True)
        if self._bar.total != event.total:
            self._bar.total = event.total
        self._bar.n = event.done
        post = {}
        if event.epochs:
            post["epoch"] = f"{event.epoch}/{event.epochs}"
        if event.loss is not None:
            post["loss"] = f"{event.loss:.4g}"
        if post:
            self._bar.set_postfix(post, refresh=False)
        self._bar.refresh()
        if event.done >= event.total and not event.epochs:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
