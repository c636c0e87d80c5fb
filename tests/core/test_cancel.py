"""Cancel is honoured within a second in every phase of a training run (backprojection, the
consensus's map fit, image sampling, stage 1's seeding, the clustering into parts, stage 2's
seed fit, the training loops), each phase is named in the progress events, and a run cancelled
anywhere resumes to the end (a cancelled phase wrote nothing)."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from cryospire_core.io.load import load_particles
from cryospire_core.pipeline import train as train_module
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.pipeline.train import SEED_FIT_STAGE, STAGE_NAMES, train
from cryospire_core.progress import Cancelled, Phase, ProgressEvent, interruptible
from tests.conftest import tiny_config

CANCEL_S = 1.0  # the promise: from the stop request to train() returning


class Monitor:
    """A progress callback and should_stop: once an event of ``phase`` arrives, stop is requested
    at once, or ``delay`` seconds later from another thread (as the dock's Cancel button does);
    the time of the request is kept."""

    def __init__(self, phase: str, delay: float = 0.0) -> None:
        self.phase, self.delay = phase, delay
        self.events: list[ProgressEvent] = []
        self.requested: float | None = None
        self._armed = False

    def _request(self) -> None:
        self.requested = time.monotonic()

    def __call__(self, event: ProgressEvent) -> None:
        self.events.append(event)
        if event.stage == self.phase and not self._armed:
            self._armed = True
            if self.delay:
                timer = threading.Timer(self.delay, self._request)
                timer.daemon = True
                timer.start()
            else:
                self._request()

    def should_stop(self) -> bool:
        return self.requested is not None

    def latency(self, ended: float) -> float:
        assert self.requested is not None, f"no event of {self.phase!r}: {sorted({e.stage for e in self.events})}"
        return ended - self.requested

    def seen(self, phase: str) -> list[ProgressEvent]:
        return [e for e in self.events if e.stage == phase]


def timed_train(*args, **kwargs) -> tuple[str, float]:
    status = train(*args, **kwargs)
    return status, time.monotonic()


def run_up_to(tiny_run: Path, dst: Path, keep: tuple[str, ...]) -> RunFolder:
    """A copy of the trained tiny run with only its config and the stage folders ``keep``."""
    dst.mkdir(parents=True)
    shutil.copy2(tiny_run / "config.json", dst / "config.json")
    for stage in keep:
        shutil.copytree(tiny_run / stage, dst / stage)
    return RunFolder(dst)


def test_a_phase_reports_then_stops():
    seen, stop = [], threading.Event()
    phase = Phase("stage 2: fitting", 4, seen.append, stop.is_set)
    phase.step(0)
    phase.step(1)
    stop.set()
    with pytest.raises(Cancelled):
        phase.step(2)
    assert [(e.stage, e.done, e.total, e.unit) for e in seen] == [("stage 2: fitting", k, 4, "step") for k in range(3)]
    assert seen[0].eta is None and seen[2].eta is not None


def test_an_interruptible_call_returns_at_once_when_cancelled():
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        interruptible(lambda: time.sleep(5.0), stop.is_set)
    assert time.monotonic() - t0 < 0.5
    assert interruptible(lambda: 7, None) == 7
    with pytest.raises(ZeroDivisionError):  # the call's own errors come through
        interruptible(lambda: 1 / 0, threading.Event().is_set)


def test_cancel_during_stage_2_seeding_returns_within_a_second(tiny_run, tmp_path):
    run = run_up_to(tiny_run, tmp_path / "run", ("consensus", "discovery", "parts"))
    ps = load_particles(tiny_run.parent / "data" / "particles.star")
    cfg = run.train_config()
    cfg.consensus = dataclasses.replace(cfg.consensus, map_fit_steps=5000)  # minutes of seed fit
    monitor = Monitor(SEED_FIT_STAGE, delay=0.3)  # mid-step, as a user's click
    status, ended = timed_train(ps, run, cfg, torch.device("cpu"), ("hierarchical",), progress=monitor,
                                should_stop=monitor.should_stop)
    assert status == "cancelled"
    fit = monitor.seen(SEED_FIT_STAGE)
    assert fit[0].done == 0 and fit[-1].total == 5000 and 0 < fit[-1].done < 5000
    assert all(e.unit == "step" for e in fit)
    step_s = fit[-1].elapsed / fit[-1].done
    assert 5000 * step_s > 5 * CANCEL_S  # left to finish, the seeding would have taken far longer
    assert monitor.latency(ended) < CANCEL_S, f"{monitor.latency(ended):.2f} s (a step: {step_s * 1000:.0f} ms)"
    # Nothing of the cancelled seeding was kept: the resumed run seeds afresh and trains stage 2.
    assert not run.seed_path("hierarchical").exists() and not run.stage_path("hierarchical").exists()
    assert train(ps, run, run.train_config(), torch.device("cpu"), ("hierarchical",)) == "finished"
    assert run.stage_done("hierarchical")


def test_cancel_during_clustering_returns_within_a_second(tiny_run, tmp_path, monkeypatch):
    run = run_up_to(tiny_run, tmp_path / "run", ("consensus", "discovery"))
    ps = load_particles(tiny_run.parent / "data" / "particles.star")
    real = train_module.discover_parts

    def slow(*args, **kwargs):  # a clustering of many Gaussians: seconds in one library call
        time.sleep(20.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "discover_parts", slow)
    phase = "parts: clustering the Gaussians into parts"
    monitor = Monitor(phase, delay=0.3)
    status, ended = timed_train(ps, run, run.train_config(), torch.device("cpu"), ("parts",), progress=monitor,
                                should_stop=monitor.should_stop)
    assert status == "cancelled" and monitor.latency(ended) < CANCEL_S
    assert not run.clustering_path.exists()
    monkeypatch.setattr(train_module, "discover_parts", real)
    assert train(ps, run, run.train_config(), torch.device("cpu"), ("parts",)) == "finished"
    assert run.clustering_path.exists()


PHASES = ("consensus: backprojecting the particles", "consensus: fitting the seed to the map", "consensus",
          "stage 1: measuring the image variance", "stage 1: seeding from the consensus", STAGE_NAMES["discovery"],
          "parts: clustering the Gaussians into parts", SEED_FIT_STAGE, STAGE_NAMES["hierarchical"])


def test_a_run_cancelled_in_every_phase_in_turn_resumes_to_the_end(tiny_run, tmp_path):
    """Each start is cancelled at the first event of the next phase; every phase is reached, in
    order, the cancel is honoured at once, and the run ends as an uncancelled one would."""
    ps = load_particles(tiny_run.parent / "data" / "particles.star")
    run = RunFolder(tmp_path / "run")
    cfg = tiny_config()
    run.update_config(train=cfg, n_particles=len(ps))
    for phase in PHASES:
        monitor = Monitor(phase)
        status, ended = timed_train(ps, run, cfg, torch.device("cpu"), progress=monitor,
                                    should_stop=monitor.should_stop)
        assert status == "cancelled", phase
        assert monitor.latency(ended) < CANCEL_S, phase
        cfg = run.train_config()  # what the cancelled start saved (the measured image variance)
    assert train(ps, run, cfg, torch.device("cpu")) == "finished"
    for stage in ("consensus", "discovery", "parts", "hierarchical"):
        assert run.stage_done(stage), stage
