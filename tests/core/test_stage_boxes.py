"""Per-stage resolution: particles read Fourier-cropped (``ParticleSet.at_box``), the renderer at
the cropped lattice, and stages trained at a smaller box than the stack's."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from cryospire_core.imaging.fourier import downsample, resample
from cryospire_core.imaging.fsc import auc, fsc
from cryospire_core.imaging.render import project
from cryospire_core.io.load import load_particles
from cryospire_core.io.mrc import StackWriter, read_map
from cryospire_core.io.particles import ImageSource
from cryospire_core.io.star import write_star
from cryospire_core.models.device import resolve_device
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.pipeline.train import train
from cryospire_core.sim.simulate import simulate, write_simulation
from tests.conftest import tiny_config


def test_at_box_reads_cropped_images(homogeneous_32):
    ps = load_particles(homogeneous_32 / "particles.star")
    half = ps.at_box(16)
    assert (half.box, half.apix, half.crop_box) == (16, 2 * ps.apix, 16)
    assert half.lattice == ps.lattice.cropped(16)
    np.testing.assert_array_equal(half.rotations, ps.rotations)
    np.testing.assert_array_equal(half.shifts, ps.shifts)  # Å: unchanged
    idx = np.array([5, 1, 7])
    want = downsample(torch.from_numpy(ps.images(idx)), 16).numpy() * (16 / 32)
    np.testing.assert_allclose(half.images(idx), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    sub = half.subset(idx)  # a subset keeps its box
    assert (sub.box, sub.apix) == (16, half.apix)
    np.testing.assert_array_equal(sub.images(slice(None)), half.images(idx))
    assert half.at_box(32).crop_box is None and half.at_box(32).apix == ps.apix  # back to the stack
    assert ps.at_most(None) == ps and ps.at_most(64).box == 32 and ps.at_most(16).box == 16
    for bad in (15, 34, 64):
        with pytest.raises(ValueError, match="even box of at most 32"):
            ps.at_box(bad)


def test_cropped_lattice_renders_the_cropped_images(homogeneous_32):
    """A mixture rendered on the cropped lattice (CTF at the cropped pixel size, shifts in Å) is
    the full-lattice image Fourier-cropped and scaled as ``at_box`` scales the data: the same
    Gaussians model the stack at either box."""
    ps = load_particles(homogeneous_32 / "particles.star")
    rng = np.random.default_rng(0)
    G = 40
    centres = torch.tensor(rng.normal(scale=40.0, size=(G, 3)), dtype=torch.float32)
    widths = torch.full((G,), 4.0 * ps.apix)  # band-limited well below the cropped Nyquist
    amps = torch.tensor(rng.uniform(0.5, 1.0, G), dtype=torch.float32)
    idx = np.arange(6)
    as_t = lambda a: torch.tensor(a[idx], dtype=torch.float32)  # noqa: E731
    R, shifts, ctf = as_t(ps.rotations), as_t(ps.shifts), as_t(ps.ctf)
    full = project(centres, widths, amps, R, shifts, ps.lattice, ctf)
    half = ps.at_box(16)
    cropped = project(centres, widths, amps, R, shifts, half.lattice, ctf)
    want = downsample(full, 16) * (16 / 32)
    error = lambda a: float((a - want).norm() / want.norm())  # noqa: E731
    # ~1 %: the renderer truncates each Gaussian at a few widths, at each lattice's own pixels
    assert error(cropped) < 0.02
    # what a wrong unit would cost: shifts read in pixels of the stack, or the CTF at its apix
    assert error(project(centres, widths, amps, R, shifts / 2, half.lattice, ctf)) > 0.1
    assert error(project(centres, widths, amps, R, shifts, half.lattice, ctf) * 2) > 0.5


@pytest.fixture(scope="module")
def band_limited_64(tmp_path_factory):
    """A homogeneous 64 px stack holding only the frequencies of a 32 px simulation (each image
    Fourier-padded from 32 px, SNR 1), and the 32 px simulation's ground-truth map."""
    root = tmp_path_factory.mktemp("bandlimited")
    write_simulation(root / "sim32", simulate("homogeneous", 32, 1500, snr=1.0, seed=4))
    ps = load_particles(root / "sim32" / "particles.star")
    stack = root / "data" / "particles.mrcs"
    stack.parent.mkdir()
    raw = dataclasses.replace(ps, contrast=1.0)  # as stored on disk
    with StackWriter(stack, 64, ps.apix / 2) as w:
        for start in range(0, len(ps), 500):
            images = torch.from_numpy(raw.images(slice(start, start + 500)))
            w.append((resample(images, 64) * 2).numpy())  # voxel-unit projections at half the pixel
    fine = dataclasses.replace(ps, apix=ps.apix / 2,
                               source=ImageSource([stack], np.zeros(len(ps), np.int64), np.arange(len(ps)), 64))
    write_star(root / "data" / "particles.star", fine)
    return root / "data" / "particles.star", read_map(root / "sim32" / "gt" / "vol_000.mrc").data


def _consensus_map(star, tmp_path, box: int | None) -> np.ndarray:
    ps = load_particles(star)
    cfg = tiny_config()
    cfg.consensus = dataclasses.replace(cfg.consensus, epochs=2, box=box, map_fit_steps=300)
    run = RunFolder(tmp_path / f"run{box}")
    run.root.mkdir()
    with run:
        run.update_config(train=cfg, n_particles=len(ps))
        assert train(ps, run, cfg, resolve_device("cpu"), stages=("consensus",)) == "finished"
    m = read_map(run.consensus_files().map)
    assert m.data.shape == ((box or 64),) * 3 and np.isclose(m.apix, ps.apix * 64 / (box or 64))
    return m.data


def test_smaller_box_reproduces_full_box_on_band_limited_data(band_limited_64, tmp_path):
    """On data with nothing above the 32 px Nyquist frequency, the consensus trained at box 32
    (images cropped as read) matches the one trained at the stack's 64 px: map quality against
    the ground truth as good (measured: 0.467 at 32 px, 0.453 at 64 px, of at most ~0.49), and
    the two maps agree with each other."""
    star, gt = band_limited_64
    at64 = downsample(torch.from_numpy(_consensus_map(star, tmp_path, None).copy()), 32, ndim=3).numpy()
    at32 = _consensus_map(star, tmp_path, 32)
    auc64, auc32, between = (auc(*fsc(a, b)) for a, b in ((at64, gt), (at32, gt), (at64, at32)))
    assert auc64 > 0.42, auc64  # a real reconstruction
    assert auc64 - 0.005 < auc32 < auc64 + 0.03, (auc32, auc64)
    assert between > 0.44, between


def test_run_with_stage_boxes(tmp_path, homogeneous_32):
    """A whole run with the consensus and stage 1 at 16 px and stage 2 at the stack's 32 px:
    each stage's files sit on its own lattice, the Gaussians carry over in Å, and the run is
    rendered and scored at the data's lattice."""
    from cryospire_core.cli.main import main

    run = tmp_path / "run"
    assert main(["train", str(homogeneous_32 / "particles.star"), "--out", str(run), "--epochs-consensus", "1",
                 "--epochs-1", "1", "--epochs-2", "1", "--gaussians-1", "64", "--gaussians-2", "128",
                 "--box-consensus", "16", "--box-1", "16", "--box-2", "64", "--quiet", "--threads", "1"]) == 0
    cfg = json.loads((run / "config.json").read_text())["train"]
    assert [cfg[s]["box"] for s in ("consensus", "discovery", "hierarchical")] == [16, 16, 64]
    folder = RunFolder(run)
    apix = load_particles(homogeneous_32 / "particles.star").apix
    for stage, box in (("consensus", 16), ("discovery", 16), ("hierarchical", 32)):
        g = folder.gaussians(stage) if stage == "consensus" else np.load(folder.seed_path(stage))
        assert (int(g["box"]), float(g["apix"])) == (box, apix * 32 / box), stage
    assert read_map(folder.map_path("discovery")).data.shape == (16,) * 3
    model = folder.model()
    assert model.lattice.box == 32
    # stage 2's seed was fitted to stage 1's 16 px map: its Gaussians render that map's molecule
    coarse = read_map(folder.map_path("discovery")).data
    with torch.no_grad():
        rendered = model.volume(model.latents.weight[0], lattice=model.lattice.cropped(16)).numpy()
    assert np.corrcoef(coarse.ravel(), rendered.ravel())[0, 1] > 0.8
    # a box given again with --resume once its stage has started is refused, in one line
    assert main(["train", str(homogeneous_32 / "particles.star"), "--out", str(run), "--resume", "--box-1", "32",
                 "--quiet"]) == 1


def test_infer_reads_new_particles_at_the_models_box(tmp_path, homogeneous_32):
    """A run whose stage 2 trained at 16 px of a 32 px stack infers latents for 32 px particles
    (cropped as they are read), and refuses particles of another field of view."""
    from cryospire_core.cli.main import main

    run, star = tmp_path / "run", str(homogeneous_32 / "particles.star")
    small = ["--box-consensus", "16", "--box-1", "16", "--box-2", "16"]
    assert main(["train", star, "--out", str(run), "--epochs-consensus", "1", "--epochs-1", "1", "--epochs-2", "1",
                 "--gaussians-1", "64", "--gaussians-2", "128", *small, "--quiet", "--threads", "1"]) == 0
    assert RunFolder(run).model().lattice.box == 16
    out = tmp_path / "z.npy"
    assert main(["infer", str(run), star, "--out", str(out), "--epochs", "1", "--candidates", "4", "--quiet"]) == 0
    assert np.load(out).shape == (2000, RunFolder(run).model().cfg.zdim)
    assert main(["infer", str(run), star, "--apix", "5", "--out", str(tmp_path / "w.npy"), "--quiet"]) == 1
