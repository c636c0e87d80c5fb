"""Shared test data: small simulated data sets, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryospire_core.simulate import simulate, write_simulation


def _simulated(tmp_path_factory, name: str, **kw) -> Path:
    out = tmp_path_factory.mktemp(name) / "data"
    write_simulation(out, simulate(**kw))
    return out


@pytest.fixture(scope="session")
def homogeneous_32(tmp_path_factory) -> Path:
    """`homogeneous` preset, 32 px, 2,000 images, SNR 0.5: a folder as `cryospire simulate` writes it."""
    return _simulated(tmp_path_factory, "hom32", preset="homogeneous", box=32, n=2000, snr=0.5, seed=3)
