"""Progress events: the core reports long work through small typed events.

The command line turns them into a terminal progress bar; the napari plugin turns them into
napari progress bars and layer updates. Nothing here knows about either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


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


ProgressCallback = Callable[[ProgressEvent], None]


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
            self._bar = tqdm(total=event.total, desc=event.stage, unit="img" if not event.epochs else "step",
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
