"""The simulator: output folder, re-reading in every format, SNR, contrast, exactness, seeds."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import torch

from cryospire_core.cli.main import main
from cryospire_core.imaging.fourier import (
    fft2_centered,
    fft3_centered,
    fourier_crop_2d,
    fourier_crop_3d,
    rfft_centered_crop,
)
from cryospire_core.io.load import load_particles
from cryospire_core.io.particles import detect_contrast
from cryospire_core.sim import simulate as sim
from cryospire_core.sim.phantoms import state_volume

BOX, N, SNR = 32, 600, 0.1


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """An assembly data set whose noise level comes from a pilot subset (as for large runs)."""
    out = tmp_path_factory.mktemp("sim") / "assembly"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sim, "PILOT_IMAGES", 150)
        result = sim.simulate("assembly", BOX, N, SNR, seed=3)
    sim.write_simulation(out, result, batch_size=128)
    return out, result


def test_output_folder_is_complete(written):
    out, result = written
    ph = result.phantom
    names = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    expected = {"particles.mrcs", "particles.star", "poses.pkl", "ctf.pkl", "metadata.json", "gt",
                "gt/labels.npy", "gt/mask.mrc", "gt/domains.mrc", "gt/beads.npz"}
    expected |= {f"gt/vol_{k:03d}.mrc" for k in range(ph.n_states)}
    assert names == expected  # nothing missing, no temporary files left behind

    meta = json.loads((out / "metadata.json").read_text())
    assert meta["box"] == BOX and meta["apix"] == pytest.approx(ph.apix) and meta["n_images"] == N
    assert meta["contrast"] == "white" and meta["options"]["seed"] == 3
    assert meta["domain_names"] == list(ph.domain_names) and meta["n_states"] == ph.n_states
    assert meta["noise_std"] == pytest.approx(result.noise_std)

    for k in (0, ph.n_states - 1):
        with mrcfile.open(out / f"gt/vol_{k:03d}.mrc") as m:
            assert m.voxel_size.x == pytest.approx(ph.apix)
            np.testing.assert_allclose(m.data, state_volume(ph, k), atol=1e-5 * m.data.max())

    beads = np.load(out / "gt/beads.npz")
    np.testing.assert_array_equal(beads["domains"], ph.domains)
    np.testing.assert_array_equal(beads["presence"], ph.presence)
    assert beads["centres"].shape == (ph.n_states, ph.n_beads, 3)


def test_mask_and_domain_map(written):
    out, result = written
    ph = result.phantom
    with mrcfile.open(out / "gt/mask.mrc") as m:
        mask = m.data.copy()
    with mrcfile.open(out / "gt/domains.mrc") as m:
        domains = np.rint(m.data).astype(int)
    assert mask.min() == 0.0 and mask.max() == 1.0
    assert np.any((mask > 0.05) & (mask < 0.95))  # a soft edge
    for k in range(ph.n_states):  # every state's density lies inside the mask
        vol = state_volume(ph, k)
        assert np.all(mask[vol > 0.05 * vol.max()] == 1.0)
    # State 0 is the full complex: every domain owns some voxels, solvent is 0.
    assert set(np.unique(domains)) == set(range(len(ph.domain_names) + 1))
    vol0 = state_volume(ph, 0)
    assert np.all(domains[vol0 > 0.5 * vol0.max()] > 0)


def test_labels_follow_populations(written):
    out, result = written
    labels = np.load(out / "gt/labels.npy")
    np.testing.assert_array_equal(labels, result.labels)
    counts = np.bincount(labels, minlength=result.phantom.n_states)
    assert counts.sum() == N
    assert np.all(np.abs(counts - N * result.phantom.populations) < 1)
    assert json.loads((out / "metadata.json").read_text())["counts"] == counts.tolist()


def _assert_matches(ps, result, atol_pose):
    assert len(ps) == N and ps.box == BOX and ps.apix == pytest.approx(result.apix)
    np.testing.assert_allclose(ps.rotations, result.rotations, atol=atol_pose)
    np.testing.assert_allclose(ps.shifts, result.shifts, atol=1e-3)
    np.testing.assert_allclose(ps.ctf[:, :7], result.ctf[:, :7], rtol=1e-6, atol=1e-5)
    assert ps.contrast == -1.0  # detected: the default output is white


def test_reread_star_and_pkls(written):
    out, result = written
    from_star = load_particles(out / "particles.star")
    _assert_matches(from_star, result, atol_pose=1e-5)
    from_pkls = load_particles(out / "particles.mrcs", poses=out / "poses.pkl", ctf=out / "ctf.pkl")
    _assert_matches(from_pkls, result, atol_pose=1e-6)
    # Both read the same stack; read back in the dark convention the images are exactly the
    # simulated ones (clean + noise).
    idx = np.arange(0, N, 7)
    np.testing.assert_array_equal(from_star.images(idx), from_pkls.images(idx))
    _, clean, _ = next(result.batches(N))
    noise = from_star.images(np.arange(N)) - clean
    assert abs(noise.std() / result.noise_std - 1) < 0.02


def test_measured_snr_and_contrast(written):
    out, result = written
    ps = load_particles(out / "particles.star", invert=True)
    images = ps.images(np.arange(N))  # dark convention
    _, clean, _ = next(result.batches(N))
    snr = clean.var(axis=(1, 2)).mean() / (images - clean).var()
    assert abs(snr / SNR - 1) < 0.1
    assert detect_contrast(ps.source) == -1.0


def test_dark_contrast_option(tmp_path):
    result = sim.simulate("homogeneous", BOX, 200, 0.1, seed=0, contrast="dark")
    sim.write_simulation(tmp_path / "dark", result)
    ps = load_particles(tmp_path / "dark" / "particles.star")
    assert ps.contrast == 1.0 and detect_contrast(ps.source) == 1.0
    assert json.loads((tmp_path / "dark" / "metadata.json").read_text())["contrast"] == "dark"


@pytest.mark.parametrize("oversample", [1, 2])
def test_projection_is_z_sum_of_rotated_gt(oversample):
    # Identity: the image is the sum over z of the GT map. A 90-degree turn about x maps
    # (x, y, z) to (x, -z, y): the image is the sum over y, with z reversed about the centre.
    result = sim.simulate("hinge", BOX, 2, np.inf, seed=0, oversample=oversample)
    k = 37
    result.labels[:] = k
    result.rotations = np.stack([np.eye(3), [[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]])
    proj = result.projections(np.arange(2))
    vol = state_volume(result.phantom, k, oversample=oversample)
    tol = 1e-5 * vol.sum(0).max()
    np.testing.assert_allclose(proj[0], vol.sum(0), atol=tol)
    np.testing.assert_allclose(proj[1], np.roll(vol.sum(1)[::-1], 1, axis=0), atol=tol)


def test_shift_and_ctf_are_applied_as_documented():
    # With CTF = -1 everywhere (w = 1, no defocus, no Cs) and whole-pixel shifts, the clean image
    # is minus the projection moved by -origin: the RELION convention.
    result = sim.simulate("homogeneous", BOX, 1, np.inf, seed=1)
    proj = result.projections(np.arange(1))[0]
    result.ctf[:] = [0.0, 0.0, 0.0, 300.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    result.shifts[:] = np.array([[2.0, -3.0]]) * result.apix  # origin (x, y) in Å
    clean = result.clean_images(np.arange(1))[0]
    np.testing.assert_allclose(clean, -np.roll(proj, (3, -2), axis=(0, 1)), atol=1e-4 * proj.max())


def test_shifts_and_ctf_ranges():
    result = sim.simulate("homogeneous", 64, 300, 1.0, seed=2)
    shifts_px = result.shifts / result.apix
    assert np.abs(shifts_px).max() <= 64 / 12.8 and np.abs(shifts_px).max() > 0.8 * 64 / 12.8
    dfu, dfv = result.ctf[:, 0], result.ctf[:, 1]
    assert dfu.min() >= 10000 and dfu.max() <= 30000 and np.all((dfu - dfv >= 0) & (dfu - dfv <= 400))
    np.testing.assert_array_equal(result.ctf[:, 3:6], np.broadcast_to([300.0, 2.7, 0.1], (300, 3)))
    assert result.apix == pytest.approx(6.0)  # CryoBench's 384 Å field of view by default


def test_seed_reproduces_images_bit_for_bit():
    def images(seed, batch_size):
        result = sim.simulate("random-hinge", BOX, 150, 0.05, seed=seed)
        return np.concatenate([img for _, _, img in result.batches(batch_size)])

    a = images(5, 64)
    np.testing.assert_array_equal(a, images(5, 64))
    assert not np.allclose(a, images(6, 64))
    # The noise stream does not depend on how the images are batched.
    np.testing.assert_allclose(images(5, 150), a, atol=1e-5 * np.abs(a).max())


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["simulate", "--preset", "mixed", "--box", "24", "--n", "50", "--snr", "0.5", "--seed", "1",
            "--out", str(out), "--quiet", "--device", "cpu"]
    assert main(args) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["options"]["preset"] == "mixed" and meta["n_states"] == 20
    assert main(args) == 1  # refuses to overwrite silently
    assert "--overwrite" in capsys.readouterr().err
    homogeneous = [a if a != "mixed" else "homogeneous" for a in args]
    assert main(homogeneous + ["--overwrite", "--contrast", "dark"]) == 0
    assert json.loads((out / "metadata.json").read_text())["contrast"] == "dark"
    assert [p.name for p in (out / "gt").glob("vol_*.mrc")] == ["vol_000.mrc"]  # no maps left from before
    odd_box = ["simulate", "--preset", "hinge", "--box", "31", "--n", "5", "--snr", "1", "--out", str(tmp_path / "x")]
    assert main(odd_box) == 1


def test_cli_structure(tmp_path):
    from tests.core.test_structure import _write_model

    pdb = _write_model(tmp_path / "m.pdb")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"moving": {"chains": ["B"], "pivot": [61, 0, 0], "axis": [0, 0, 1],
                                           "angles_deg": [-30, 30], "states": 3}, "optional": [["C"]]}))
    out = tmp_path / "model"
    assert main(["simulate", "--structure", str(pdb), "--spec", str(spec), "--box", "32", "--apix", "8",
                 "--n", "60", "--snr", "1", "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["n_states"] == 6 and meta["domain_names"] == ["A", "B", "C"]
    assert meta["phantom"]["structure"] == str(pdb) and meta["options"]["preset"] == "structure"
    assert len(load_particles(out / "particles.star")) == 60
    spec.write_text("{not json")
    assert main(["simulate", "--structure", str(pdb), "--spec", str(spec), "--box", "32", "--apix", "8",
                 "--n", "5", "--snr", "1", "--out", str(tmp_path / "bad"), "--quiet"]) == 1


@pytest.mark.parametrize("ndim, P, D", [(2, 64, 32), (2, 48, 48), (3, 32, 16)])
def test_rfft_centered_crop_matches_full_transform(ndim, P, D):
    x = torch.randn((3,) + (P,) * ndim, dtype=torch.float64)
    full = fft2_centered(x) if ndim == 2 else fft3_centered(x)
    want = fourier_crop_2d(full, D) if ndim == 2 else fourier_crop_3d(full, D)
    torch.testing.assert_close(rfft_centered_crop(x, D, ndim), want)
