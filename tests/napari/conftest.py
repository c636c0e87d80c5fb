"""Tiny data and configs for the dock tests: a 32 px hinge data set of 300 images and a
TrainConfig with 1 epoch per stage and small Gaussian counts (each stage takes ~1 s here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cryospire_core.io.load import load_particles
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.pipeline.train import train
from cryospire_core.sim.simulate import simulate, write_simulation
from tests.conftest import tiny_config


@pytest.fixture
def dialogs(monkeypatch) -> list:
    """Reader dialogs napari would have shown (each answered "cancel", so none stays open)."""
    from napari._qt.dialogs.qt_reader_dialog import QtReaderDialog

    shown = []

    def record(dialog):
        shown.append(dialog)
        return "", False

    monkeypatch.setattr(QtReaderDialog, "get_user_choices", record)
    return shown


@pytest.fixture
def notes():
    """The napari notifications shown during a test."""
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


@pytest.fixture(scope="session")
def tiny_star(tmp_path_factory) -> Path:
    """particles.star of a simulated hinge: 32 px, 300 images, SNR 10."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    write_simulation(out, simulate("hinge", 32, 300, snr=10.0, seed=1))
    return out / "particles.star"


@pytest.fixture(scope="session")
def parts_run(tiny_star, tmp_path_factory) -> Path:
    """A run trained (by the core, no GUI) up to part discovery: RUN/parts/clustering.npz."""
    torch.set_num_threads(1)
    ps = load_particles(tiny_star)
    cfg = tiny_config()
    run = RunFolder(tmp_path_factory.mktemp("parts") / "run")
    run.update_config(train=cfg, n_particles=len(ps))
    assert train(ps, run, cfg, torch.device("cpu"), stages=("consensus", "discovery", "parts")) == "finished"
    return run.root
