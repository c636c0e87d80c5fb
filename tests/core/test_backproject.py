"""Direct Fourier inversion (backproject.py, cli/backproject.py).

The synthetic particles here are made in closed form, independently of the simulator: a map of
isotropic Gaussian blobs has an analytic Fourier transform, so each image is that transform on
its central section (A.T @ k), moved by -shift, times the CTF, on a box twice the image size
(the CTF delocalises signal out of the box, as in real data), cropped, plus white noise.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryospire_core.analysis.metrics import load_ground_truth
from cryospire_core.cli.main import main
from cryospire_core.imaging.ctf import compute_ctf, make_ctf_params
from cryospire_core.imaging.fourier import freq_grid_2d, ifft2_centered, shift_phase
from cryospire_core.imaging.fsc import auc, fsc, resolution
from cryospire_core.imaging.geometry import random_rotations
from cryospire_core.io.particles import ImageSource, ParticleSet, Provenance
from cryospire_core.models.backproject import backproject

D, APIX, N, SNR = 32, 3.0, 2000, 0.5
SIGMA_PX = 1.5


def _blob_map(centres: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """Gaussian blobs (centres (G, 3) px, x y z) sampled on the D^3 lattice, (z, y, x)."""
    f = np.arange(D) - D // 2
    z, y, x = np.meshgrid(f, f, f, indexing="ij")
    vol = np.zeros((D, D, D))
    for (cx, cy, cz), m in zip(centres, amps):
        vol += m * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * SIGMA_PX**2))
    return vol.astype(np.float32)


def _images(centres, amps, rotations, shifts_a, ctf) -> np.ndarray:
    """Closed-form particle images (B, D, D), dark convention, no noise."""
    P = 2 * D
    k = freq_grid_2d(P, dtype=torch.float64)  # cycles/px
    f1 = k[0, :, 0]  # the 1D frequencies of either axis
    c = torch.einsum("bij,gj->bgi", torch.as_tensor(rotations), torch.as_tensor(centres))  # (B, G, 3) px
    # Blob transform (2 pi s^2)^(3/2) m exp(-2 pi^2 s^2 |k|^2) exp(-2 pi i k.c'), separable in kx, ky.
    ex = torch.exp(-2j * torch.pi * c[..., 0, None] * f1)  # (B, G, P)
    ey = torch.exp(-2j * torch.pi * c[..., 1, None] * f1)
    amp = torch.as_tensor(amps, dtype=torch.complex128) * (2 * np.pi * SIGMA_PX**2) ** 1.5
    F = torch.einsum("g,bgy,bgx->byx", amp, ey, ex) * torch.exp(-2 * np.pi**2 * SIGMA_PX**2 * (k**2).sum(-1))
    F = F * shift_phase(k, -torch.as_tensor(shifts_a / APIX)) * compute_ctf(k / APIX, torch.as_tensor(ctf))
    s = P // 2 - D // 2
    return ifft2_centered(F).numpy()[:, s : s + D, s : s + D].astype(np.float32)


def make_particles(folder: Path, n: int = N, snr: float = SNR, seed: int = 0) -> tuple[ParticleSet, np.ndarray]:
    """n closed-form particles of a random (chiral) blob molecule, and its true map."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-D / 4, D / 4, size=(25, 3))
    amps = rng.uniform(0.5, 1.5, size=25)
    rotations = random_rotations(n, rng)
    shifts = rng.uniform(-D / 12, D / 12, size=(n, 2)) * APIX
    dfu = rng.uniform(5000, 10000, size=n)  # defocus for which a 96 Å box samples the CTF well
    ctf = make_ctf_params(n, dfu, dfu - rng.uniform(0, 300, n), rng.uniform(0, 180, n))
    images = np.concatenate([_images(centres, amps, rotations[i : i + 250], shifts[i : i + 250], ctf[i : i + 250])
                             for i in range(0, n, 250)])
    if np.isfinite(snr):
        images += rng.normal(0, np.sqrt(images.var() / snr), images.shape).astype(np.float32)
    path = folder / "particles.mrcs"
    with mrcfile.new(path, overwrite=True) as f:
        f.set_data(images)
    source = ImageSource([path], np.zeros(n, dtype=np.int64), np.arange(n), D)
    ps = ParticleSet(source, APIX, rotations, shifts, ctf, np.ones(n, dtype=np.int64), Provenance("simulated", path))
    return ps, _blob_map(centres, amps)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    return make_particles(tmp_path_factory.mktemp("noisy"))


@pytest.fixture(scope="module")
def reconstruction(noisy):
    ps, _ = noisy
    return backproject(ps, halves=True)


def _auc(vol, truth):
    return auc(*fsc(vol, truth))


def test_reconstruction_reaches_a_good_resolution(noisy, reconstruction):
    _, truth = noisy
    freqs, curve = fsc(reconstruction.volume, truth)
    assert 1 / resolution(freqs, curve, 0.5) <= 3.2  # measured 2.91 px (32/11) over 3 seeds
    assert auc(freqs, curve) > 0.32  # measured 0.338-0.341
    # Same units as the truth (voxel sums preserved): the fitted scale is close to 1.
    scale = float((reconstruction.volume * truth).sum() / (truth * truth).sum())
    assert 0.9 < scale < 1.05


def test_hand_is_right(noisy, reconstruction):
    _, truth = noisy
    mirrored = np.roll(truth[::-1], 1, axis=0)  # z -> -z about voxel D // 2
    assert _auc(reconstruction.volume, mirrored) < _auc(reconstruction.volume, truth) - 0.15  # measured 0.11 vs 0.34


def test_shifts_and_ctf_matter(noisy, reconstruction):
    ps, truth = noisy
    good = _auc(reconstruction.volume, truth)
    no_shift = dataclasses.replace(ps, shifts=np.zeros_like(ps.shifts))
    flipped = dataclasses.replace(ps, shifts=-ps.shifts)
    # CTF = -w = -1 at every frequency: keeps the contrast sign, ignores the oscillations.
    no_ctf = dataclasses.replace(ps, ctf=make_ctf_params(len(ps), 0.0, 0.0, 0.0, 300.0, 0.0, 1.0, 0.0))
    for bad in (no_shift, flipped, no_ctf):
        assert _auc(backproject(bad).volume, truth) < good - 0.1  # measured 0.18 / 0.21 vs 0.34


def test_half_maps(noisy, reconstruction):
    _, truth = noisy
    r = reconstruction
    assert r.half1.shape == r.half2.shape == (D, D, D)
    assert np.all(r.fsc_curve[:8] > 0.95) and r.fsc_curve[-1] < 0.3
    # Each half is a fair (noisier) reconstruction of the truth.
    assert 0.25 < _auc(r.half1, truth) < _auc(r.volume, truth)


def test_noise_free_reconstruction_is_accurate(tmp_path):
    ps, truth = make_particles(tmp_path, n=1000, snr=np.inf, seed=1)
    errors = {pad: np.linalg.norm(backproject(ps, pad=pad).volume - truth) / np.linalg.norm(truth) for pad in (1, 2)}
    assert errors[2] < 0.05  # measured 3.5% (padding 2, trilinear, gridding correction)
    assert errors[1] > 2 * errors[2]  # measured 15%: why the default pads


def test_streaming_batches_and_progress(noisy):
    ps, _ = noisy
    ps = ps.subset(np.arange(100))
    events = []
    small = backproject(ps, batch_size=7, progress=events.append)
    assert [e.done for e in events] == [min(7 * (i + 1), 100) for i in range(15)]
    assert all(e.total == 100 and e.stage == "backproject" for e in events)
    np.testing.assert_allclose(small.volume, backproject(ps).volume, atol=1e-5 * np.abs(small.volume).max())


def test_cli_writes_the_map_and_half_maps(noisy, tmp_path, capsys):
    from cryospire_core.io.cryodrgn import write_ctf_pkl, write_poses_pkl

    ps, _ = noisy
    write_poses_pkl(tmp_path / "poses.pkl", ps)
    write_ctf_pkl(tmp_path / "ctf.pkl", ps)
    args = ["backproject", str(ps.source.files[0]), "--poses", str(tmp_path / "poses.pkl"),
            "--ctf", str(tmp_path / "ctf.pkl"), "--invert", "no", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "out" / "m.mrc"), "--halfmaps"]) == 0
    assert "half-map FSC=0.143 resolution (unmasked)" in capsys.readouterr().out
    with mrcfile.open(tmp_path / "out" / "m.mrc") as m:
        assert m.voxel_size.x == pytest.approx(APIX)
        np.testing.assert_allclose(m.data, backproject(ps).volume, atol=1e-4 * np.abs(m.data).max())
    assert (tmp_path / "out" / "m_half1.mrc").exists() and (tmp_path / "out" / "m_half2.mrc").exists()
    assert main(args + ["--out", str(tmp_path / "m.txt")]) == 1
    assert "m.txt: --out: expected a .mrc or .map file name" in capsys.readouterr().err


def test_simulator_data_same_map_from_star_cs_and_pkls(tmp_path):
    """Noise-free images from the simulator (an independent forward model) invert to its ground
    truth, and the same particles read as .star, .cs and .mrcs + pkls give the same map."""
    from cryospire_core.io.cryosparc import write_cs
    from cryospire_core.io.load import load_particles
    from cryospire_core.sim.simulate import simulate, write_simulation

    out = write_simulation(tmp_path / "sim", simulate("homogeneous", 32, 300, np.inf, seed=2))
    from_star = load_particles(out / "particles.star")
    write_cs(out / "particles.cs", from_star)
    from_cs = load_particles(out / "particles.cs")
    from_pkl = load_particles(out / "particles.mrcs", poses=out / "poses.pkl", ctf=out / "ctf.pkl")
    ref = backproject(from_star, wiener=0.0).volume
    gt = load_ground_truth(out / "gt")
    assert np.linalg.norm(ref - gt[0]) / np.linalg.norm(gt[0]) < 0.03  # measured 1.5%
    assert fsc(ref, gt[0], gt.mask)[1].min() > 0.99
    for ps in (from_cs, from_pkl):
        np.testing.assert_allclose(backproject(ps, wiener=0.0).volume, ref, atol=1e-4 * np.abs(ref).max())


@pytest.mark.slow
def test_end_to_end_homogeneous_simulation(tmp_path, capsys):
    """Simulator -> ``cryospire backproject`` -> ``cryospire evaluate`` at 64 px.

    The issue's target (FSC 0.5 at <= 3 px, 10,000 images at SNR 0.1) is measured at 5,000
    images here to stay fast; the full size is measured outside the test suite.
    """
    assert main(["simulate", "--preset", "homogeneous", "--box", "64", "--n", "5000", "--snr", "0.1",
                 "--seed", "0", "--out", str(tmp_path / "sim"), "--quiet"]) == 0
    out_map = tmp_path / "bp" / "map.mrc"
    assert main(["backproject", str(tmp_path / "sim" / "particles.star"), "--out", str(out_map),
                 "--halfmaps", "--quiet"]) == 0
    assert (tmp_path / "bp" / "map_half1.mrc").exists() and (tmp_path / "bp" / "map_half2.mrc").exists()
    assert "half-map FSC=0.143 resolution" in capsys.readouterr().out
    with mrcfile.open(out_map) as m:
        assert m.voxel_size.x == pytest.approx(6.0)
        vol = m.data.copy()
    gt = load_ground_truth(tmp_path / "sim" / "gt")
    freqs, curve = fsc(vol, gt[0], gt.mask)
    assert 1 / resolution(freqs, curve, 0.5) <= 3.0
    assert main(["evaluate", "--gt", str(tmp_path / "sim" / "gt"), "--map", str(out_map)]) == 0
    assert "homogeneous floor" in capsys.readouterr().out
