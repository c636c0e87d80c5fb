"""kill -9 at a random moment of `cryospire train`, then `--resume`: the run finishes and is valid.

Five rounds, each killing a real `python -m cryospire_core.cli.main train` process with SIGKILL at
a seeded random moment of one phase: inside the consensus, inside stage 1 while checkpoints are
written every step, between the clustering and stage 2 (stage 2's seeding), inside stage 2 while
checkpoints are written every step (the kill lands as soon as an atomic write's temporary file
is seen), and at a uniform random time over the rest of the run. The consensus (most of the
run's time) is trained once: rounds 2-5 start from a copy of round 1's finished consensus, as a
`--resume` of it. After each kill, the same command with `--resume` must exit 0 and leave a
valid run: latents (N, zdim) finite, config.json readable, every .npz/.pt/.mrc loadable, no
temporary file of an atomic write, and the lock free.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cryospire_core.io.atomic import TEMP_GLOB
from cryospire_core.io.mrc import read_map
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.sim.simulate import simulate, write_simulation

pytestmark = pytest.mark.slow

N_IMAGES = 300
SMALL = ["--profile", "cpu", "--epochs-consensus", "1", "--epochs-1", "1", "--epochs-2", "1", "--gaussians-1", "32",
         "--gaussians-2", "48", "--batch-size", "64", "--device", "cpu", "--quiet"]
RESUME_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def particles(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("killdata") / "data"
    write_simulation(out, simulate("hinge", 32, N_IMAGES, snr=1.0, seed=5))
    return out / "particles.star"


def _start(particles: Path, run: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cryospire_core.cli.main", "train", str(particles), "--out", str(run), *SMALL, *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen, ready, timeout: float = 60.0) -> bool:
    """Poll every millisecond until ``ready()``; False if the process ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ready():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    raise AssertionError("training never reached the kill point")


def _sleep_alive(proc: subprocess.Popen, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        time.sleep(0.005)


def _temporaries(run: Path) -> list[Path]:
    return [p for d in (run, *run.iterdir()) if d.is_dir() for p in d.glob(TEMP_GLOB)]


def _kill(proc: subprocess.Popen) -> bool:
    """SIGKILL; True if the process was still running."""
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    return alive and proc.returncode == -signal.SIGKILL


def _assert_valid_run(run: Path) -> None:
    cfg = RunFolder(run).config()
    assert cfg["n_particles"] == N_IMAGES and "train" in cfg
    latents = np.load(run / "latents.npy", allow_pickle=False)
    assert latents.ndim == 2 and latents.shape[0] == N_IMAGES and latents.shape[1] >= 1
    assert latents.dtype == np.float32 and np.isfinite(latents).all()
    for f in sorted(run.rglob("*")):
        if f.suffix == ".npz":
            with np.load(f, allow_pickle=False) as z:
                assert all(np.asarray(z[k]).size >= 0 for k in z.files), f
        elif f.suffix == ".pt":
            torch.load(f, map_location="cpu", weights_only=True)
        elif f.suffix == ".mrc":
            assert np.isfinite(read_map(f, require_cubic=False).data).all(), f
    assert _temporaries(run) == [], _temporaries(run)
    np.testing.assert_array_equal(RunFolder(run).model().latents.numpy(), latents)
    with RunFolder(run):  # the lock is free
        pass


def _resume_and_check(particles: Path, run: Path) -> None:
    proc = _start(particles, run, "--resume")
    out, err = proc.communicate(timeout=RESUME_TIMEOUT_S)
    assert proc.returncode == 0, err[-2000:]
    assert "train finished" in out
    _assert_valid_run(run)


def test_kill_minus_nine_then_resume_five_times(particles, tmp_path):
    rng = np.random.default_rng(2024)
    log = []

    # Round 1: a fresh run killed inside the consensus (seeding done, image fitting under way).
    run = tmp_path / "run1"
    proc = _start(particles, run)
    _wait(proc, lambda: (run / "consensus" / "backprojection.mrc").exists())
    delay = rng.uniform(0.0, 4.0)
    _sleep_alive(proc, delay)
    killed = _kill(proc)
    log.append(("consensus", f"+{delay:.2f} s after the backprojection", killed,
                (run / "consensus" / "gaussians.npz").exists()))
    _resume_and_check(particles, run)
    consensus_done = tmp_path / "consensus_done"
    consensus_done.mkdir()
    shutil.copy(run / "config.json", consensus_done / "config.json")
    shutil.copytree(run / "consensus", consensus_done / "consensus")

    def fresh(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(consensus_done, dest)
        return dest

    def kill_in_checkpoint_write(name: str, stage: str, label: str) -> None:
        """A checkpoint every step; killed while a temporary file is in RUN/``stage``."""
        run = fresh(name)
        proc = _start(particles, run, "--resume", "--checkpoint-minutes", "0")
        seen = _wait(proc, lambda: any(p.parent.name == stage for p in _temporaries(run)))
        killed = _kill(proc)
        log.append((label, "on a temporary file" if seen else "(process ended first)", killed,
                    bool(_temporaries(run))))
        _resume_and_check(particles, run)

    # Round 2: inside stage 1, while a file (checkpoint or seed) is being written.
    kill_in_checkpoint_write("run2", "discovery", "stage 1 atomic write")

    # Round 3: between the clustering and stage 2's first step (the stage-2 seed fit).
    run = fresh("run3")
    proc = _start(particles, run, "--resume")
    _wait(proc, lambda: (run / "parts" / "clustering.npz").exists())
    delay = rng.uniform(0.0, 1.0)
    _sleep_alive(proc, delay)
    killed = _kill(proc)
    log.append(("stage 2 seeding", f"+{delay:.2f} s after the clustering", killed,
                (run / "hierarchical" / "seed.npz").exists()))
    _resume_and_check(particles, run)

    # Round 4: inside stage 2, while a file (checkpoint or seed) is being written.
    kill_in_checkpoint_write("run4", "hierarchical", "stage 2 atomic write")

    # Round 5: a uniform random moment of the remaining run (startup, stage 1, parts or stage 2).
    run = fresh("run5")
    proc = _start(particles, run, "--resume")
    delay = rng.uniform(0.5, 6.0)
    _sleep_alive(proc, delay)
    killed = _kill(proc)
    log.append(("anywhere after the consensus", f"+{delay:.2f} s after start", killed,
                sorted(p.name for p in run.iterdir())))
    _resume_and_check(particles, run)

    print("\nkill-and-resume rounds (phase, moment, killed, state at the kill):")
    for row in log:
        print("  ", *row)
    assert sum(row[2] for row in log) >= 4, log
