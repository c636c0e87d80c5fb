"""Shared test data: small simulated data sets, made once per test session."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from cryospire_core.io.load import load_particles
from cryospire_core.pipeline.config import TrainConfig
from cryospire_core.sim.phantoms import make_phantom
from cryospire_core.sim.simulate import simulate, write_simulation


def tiny_config() -> TrainConfig:
    """1 epoch per stage, 128 / 128 / 256 Gaussians, a small stage-2 MLP."""
    cfg = TrainConfig.for_profile("cpu")
    rep = dataclasses.replace
    cfg.consensus = rep(cfg.consensus, epochs=1, map_fit_steps=20, n_gaussians=128)
    cfg.discovery = rep(cfg.discovery, epochs=1, n_gaussians=128)
    cfg.hierarchical = rep(cfg.hierarchical, epochs=1, n_gaussians=256, hidden=32, depth=1)
    return cfg


def _simulated(tmp_path_factory, name: str, **kw) -> Path:
    out = tmp_path_factory.mktemp(name) / "data"
    write_simulation(out, simulate(**kw))
    return out


@pytest.fixture(scope="session")
def homogeneous_32(tmp_path_factory) -> Path:
    """`homogeneous` preset, 32 px, 2,000 images, SNR 0.5: a folder as `cryospire simulate` writes it."""
    return _simulated(tmp_path_factory, "hom32", preset="homogeneous", box=32, n=2000, snr=0.5, seed=3)


@pytest.fixture(scope="session")
def hinge_two_states(tmp_path_factory):
    """(ParticleSet, labels, seed mixture): the hinge phantom's two extreme states, 32 px,
    1,000 images, SNR 10; the seed is the beads at the mean of the two states' positions."""
    box = 32
    ph = make_phantom("hinge", box, 384.0 / box)
    two = dataclasses.replace(ph, centres=ph.centres[[0, -1]], presence=ph.presence[[0, -1]],
                              populations=np.array([0.5, 0.5]), state_names=("open", "closed"))
    out = write_simulation(tmp_path_factory.mktemp("hinge2") / "data", simulate("hinge", box, 1000, snr=10.0, seed=1, phantom=two))
    seed = {"centres": two.centres.mean(0), "widths": two.sigmas, "amplitudes": two.amplitudes,
            "box": np.int64(box), "apix": np.float64(two.apix)}
    return load_particles(out / "particles.star"), np.load(out / "gt" / "labels.npy"), seed


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder `cryospire train` trained through every stage (1 epoch each, 128 / 256
    Gaussians) on a simulated hinge: 32 px, 300 images, SNR 10. Its config records the particle
    file (RUN/../data/particles.star). Tests that change a run work on a copy."""
    import torch

    from cryospire_core.cli.main import main

    root = tmp_path_factory.mktemp("tiny_run")
    write_simulation(root / "data", simulate("hinge", 32, 300, snr=10.0, seed=1))
    threads = torch.get_num_threads()
    try:  # tiny problem: worker threads would only fight the other tests for the CPU
        assert main(["train", str(root / "data" / "particles.star"), "--out", str(root / "run"), "--epochs-consensus",
                     "1", "--epochs-1", "1", "--epochs-2", "1", "--gaussians-1", "128", "--gaussians-2", "256",
                     "--quiet", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    return root / "run"


def project_run(trained: Path, project: Path, monkeypatch) -> Path:
    """``project``/data and ``project``/runs/run: a copy of the run ``trained`` and of its data
    (``trained``/../data), the run restarted from ``project`` with a relative particle path
    (``cryospire train data/particles.star --out runs/run --resume``, nothing left to train), as a
    user who trains in a project directory records it. Returns ``project``."""
    import torch

    from cryospire_core.cli.main import main

    shutil.copytree(trained.parent / "data", project / "data")
    shutil.copytree(trained, project / "runs" / "run")
    monkeypatch.chdir(project)
    threads = torch.get_num_threads()
    try:
        assert main(["train", "data/particles.star", "--out", "runs/run", "--resume", "--quiet", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    return project
