"""Two processes started by torchrun (gloo, CPU) train the same run as one process with the same
seed and global batch size, and rank 0 alone writes it. ``CRYOSPIRE_TEST_BACKEND=nccl`` runs the
same tests on CUDA (nccl), which needs two GPUs: NCCL refuses two ranks on one GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cryospire_core.cli.main import main
from cryospire_core.io.atomic import TEMP_GLOB
from cryospire_core.models.distributed import Distributed
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.sim.simulate import simulate, write_simulation

#: The backend under test, chosen by the device every process trains on (see models/distributed.py).
BACKEND = os.environ.get("CRYOSPIRE_TEST_BACKEND", "gloo")
DEVICE = {"gloo": "cpu", "nccl": "cuda"}[BACKEND]
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and torch.cuda.device_count() < 2,
                                reason=f"nccl needs one CUDA GPU per process (it refuses two ranks on one GPU): "
                                       f"2 needed, {torch.cuda.device_count()} found")

STAGES = ["--stage", "consensus", "--stage", "discovery"]
SMALL = ["--epochs-consensus", "1", "--epochs-1", "2", "--gaussians-1", "64", "--batch-size", "16", "--quiet",
         "--device", DEVICE, "--precision", "fp32"]

#: Largest difference allowed between the one- and two-process results, relative to the largest
#: value: only the order of floating-point sums differs (measured ~1e-5 on the latents).
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def particles(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "data"
    write_simulation(out, simulate("hinge", 32, 200, snr=1.0, seed=5))
    return out / "particles.star"


def _one_process(particles: Path, run: Path, seed: int) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1)
    try:
        assert main(["train", str(particles), "--out", str(run), "--seed", str(seed), *STAGES, *SMALL]) == 0
    finally:
        torch.set_num_threads(threads)


def _start_two_processes(particles: Path, run: Path) -> subprocess.Popen:
    """torchrun --standalone (a free local rendezvous port) with 2 processes, seed 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "cryospire_core.cli.main", "train", str(particles), "--out", str(run), "--seed", "0", *STAGES, *SMALL]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _relative_difference(a: Path, b: Path, rel: str, key: str | None = None) -> float:
    x, y = np.load(a / rel), np.load(b / rel)
    if key is not None:
        x, y = x[key], y[key]
    return float(np.abs(x - y).max() / np.abs(x).max())


@pytest.fixture(scope="module")
def runs(particles, tmp_path_factory) -> dict:
    """The same run (seed 0) by two torchrun processes and, meanwhile, by one process."""
    root = tmp_path_factory.mktemp("runs")
    proc = _start_two_processes(particles, root / "two")
    _one_process(particles, root / "one", seed=0)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    return {"one": root / "one", "two": root / "two", "stdout": out}


def test_two_gloo_processes_match_one_process(runs, particles, tmp_path):
    one, two = runs["one"], runs["two"]
    assert runs["stdout"].count("train finished") == 1 and "x 2 processes" in runs["stdout"]  # rank 0 alone reports
    assert RunFolder(two).config()["train_command"]["processes"] == 2
    assert not list(two.rglob(TEMP_GLOB))
    for rel, key in (("latents.npy", None), ("consensus/gaussians.npz", "centres"),
                     ("consensus/gaussians.npz", "amplitudes"), ("discovery/outputs.npz", "features"),
                     ("discovery/outputs.npz", "gates_sample")):
        assert _relative_difference(one, two, rel, key) < TOLERANCE, (rel, key)
    # The comparison can fail: another seed changes the latents by far more than the tolerance.
    _one_process(particles, tmp_path / "other", seed=1)
    assert _relative_difference(one, tmp_path / "other", "latents.npy") > 100 * TOLERANCE


def test_a_two_process_checkpoint_resumes_in_one_process(runs, particles, tmp_path):
    """Rank 0's checkpoint holds every rank's latents, so a run continues with another process count."""
    two = tmp_path / "two"
    shutil.copytree(runs["two"], two)
    state = torch.load(two / "discovery" / "checkpoint.pt", weights_only=True)
    latents = np.load(two / "latents.npy")
    np.testing.assert_array_equal(state["model"]["latents.embedding.weight"].numpy(), latents)
    (two / "discovery" / "model.pt").unlink()  # stage 1 finishes again from its checkpoint
    assert main(["train", str(particles), "--out", str(two), "--resume", *STAGES, *SMALL]) == 0
    np.testing.assert_array_equal(np.load(two / "latents.npy"), latents)


def test_batch_shares_are_disjoint_and_cover_the_batch():
    n, chunk = 103, np.random.default_rng(0).permutation(103)[:40]
    shares = [Distributed(r, 3).share(chunk, n) for r in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == sorted(chunk.tolist())
    for r, s in enumerate(shares):  # contiguous blocks of particles, order of the batch kept
        assert np.all(s * 3 // n == r) and np.all(np.diff(np.flatnonzero(np.isin(chunk, s))) > 0)
    assert np.array_equal(Distributed().share(chunk, n), chunk)
