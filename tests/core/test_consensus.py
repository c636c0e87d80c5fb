"""Stage 0: the consensus mixture reconstructs the ground truth as well as the backprojection,
and a killed run resumes to the same result as an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from cryospire_core.imaging.fsc import auc, fsc, resolution
from cryospire_core.io.load import load_particles
from cryospire_core.io.mrc import read_map
from cryospire_core.models.backproject import backproject
from cryospire_core.models.consensus import ConsensusConfig, fit_consensus
from cryospire_core.pipeline.runfolder import RunFolder


def _score(vol, gt, mask):
    freqs, curve = fsc(vol, gt, mask)
    return auc(freqs, curve), 1.0 / resolution(freqs, curve, 0.5)


def test_consensus_matches_backprojection_quality(homogeneous_32, tmp_path):
    ps = load_particles(homogeneous_32 / "particles.star")
    gt = read_map(homogeneous_32 / "gt" / "vol_000.mrc").data
    mask = read_map(homogeneous_32 / "gt" / "mask.mrc").data
    bp = backproject(ps).volume
    files = RunFolder(tmp_path).consensus_files()
    res = fit_consensus(ps, bp, files, ConsensusConfig(epochs=3), torch.device("cpu"))
    assert res.status == "finished"
    assert files.map.exists() and files.gaussians.exists()
    bp_auc, _ = _score(bp, gt, mask)
    gmm_auc, gmm_res_px = _score(read_map(files.map).data, gt, mask)
    assert gmm_res_px <= 3.0
    assert gmm_auc >= bp_auc - 0.02
    assert res.history[-1] < res.history[0]


def _consensus_cmd(data, out, *extra):
    return [sys.executable, "-m", "cryospire_core.cli.main", "consensus", str(data / "particles.star"), "--out", str(out),
            "--epochs", "2", "--n-gaussians", "512", "--quiet", *extra]


@pytest.mark.slow
def test_killed_consensus_resumes_to_the_same_result(homogeneous_32, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_consensus_cmd(homogeneous_32, ref), check=True, env=env, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_consensus_cmd(homogeneous_32, run, "--checkpoint-minutes", "0.003"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "consensus" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let it get part-way into the first epoch
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "consensus" / "gaussians.npz").exists()
    state = torch.load(ckpt, weights_only=True)
    assert (state["epoch"], state["step"]) != (2, 0)

    again = subprocess.run(_consensus_cmd(homogeneous_32, run), env=env, capture_output=True, text=True)
    assert again.returncode == 1 and "--resume" in again.stderr  # refuses to overwrite silently
    subprocess.run(_consensus_cmd(homogeneous_32, run, "--resume"), check=True, env=env, capture_output=True)

    a, b = np.load(ref / "consensus" / "gaussians.npz"), np.load(run / "consensus" / "gaussians.npz")
    scale = np.abs(a["centres"]).max()
    np.testing.assert_allclose(b["centres"], a["centres"], atol=1e-3 * scale)
    np.testing.assert_allclose(b["amplitudes"], a["amplitudes"], rtol=1e-3, atol=1e-3 * np.abs(a["amplitudes"]).max())
    np.testing.assert_allclose(read_map(run / "consensus" / "map.mrc").data, read_map(ref / "consensus" / "map.mrc").data,
                               atol=1e-3 * np.abs(read_map(ref / "consensus" / "map.mrc").data).max())
