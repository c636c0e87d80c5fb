"""load.py: the same particles through .star, .cs and .mrcs + pkls; contrast; CLI options."""

import argparse

import numpy as np
import pytest

from cryospire_core.cli.options import add_particle_args, particles_from_args
from cryospire_core.errors import InputError
from cryospire_core.imaging.ctf import make_ctf_params
from cryospire_core.imaging.geometry import random_rotations
from cryospire_core.io.cryodrgn import write_ctf_pkl, write_poses_pkl
from cryospire_core.io.load import load_particles, write_particles
from cryospire_core.io.mrc import write_stack
from cryospire_core.io.particles import ImageSource, ParticleSet, Provenance

N, D, APIX = 50, 16, 1.5


def _white_discs(rng):
    """White particles (bright disc) on noise, as stacks usually hold after extraction."""
    yy, xx = np.mgrid[:D, :D] - D // 2
    disc = (np.hypot(xx, yy) < D / 5).astype(np.float32)
    return disc + 0.5 * rng.standard_normal((N, D, D)).astype(np.float32)


@pytest.fixture
def all_formats(tmp_path):
    """One particle set written as .star, .cs and .mrcs + pkls."""
    rng = np.random.default_rng(0)
    images = _white_discs(rng)
    stack = tmp_path / "data" / "particles.mrcs"
    write_stack(stack, images, APIX)
    ps = ParticleSet(
        source=ImageSource([stack], np.zeros(N, np.int64), np.arange(N), D),
        apix=APIX,
        rotations=random_rotations(N, rng),
        shifts=rng.uniform(-3, 3, (N, 2)),
        ctf=make_ctf_params(N, rng.uniform(1e4, 3e4, N), rng.uniform(1e4, 3e4, N), rng.uniform(0, 180, N)),
        optics_group=np.ones(N, np.int64),
        provenance=Provenance("simulated", tmp_path),
    )
    write_particles(tmp_path / "star" / "p.star", ps)
    write_particles(tmp_path / "cs" / "p.cs", ps)
    write_poses_pkl(tmp_path / "data" / "poses.pkl", ps)
    write_ctf_pkl(tmp_path / "data" / "ctf.pkl", ps)
    return tmp_path, ps, images


def test_three_formats_give_the_same_particles(all_formats):
    root, ps, images = all_formats
    loaded = {
        "star": load_particles(root / "star" / "p.star"),
        "cs": load_particles(root / "cs" / "p.cs"),
        "pkl": load_particles(root / "data" / "particles.mrcs", poses=root / "data" / "poses.pkl", ctf=root / "data" / "ctf.pkl"),
    }
    assert {k: v.provenance.format for k, v in loaded.items()} == {"star": "relion3.1", "cs": "cryosparc", "pkl": "cryodrgn"}
    for got in loaded.values():
        assert got.apix == pytest.approx(APIX) and got.box == D
        np.testing.assert_allclose(got.rotations, ps.rotations, atol=1e-5)
        np.testing.assert_allclose(got.shifts, ps.shifts, atol=1e-5)
        np.testing.assert_allclose(got.ctf, ps.ctf, rtol=1e-6, atol=1e-5)
        assert got.contrast == -1.0  # white discs detected
        np.testing.assert_array_equal(got.images(np.arange(N)), -images)


def test_contrast_options(all_formats):
    root, ps, images = all_formats
    star = root / "star" / "p.star"
    assert load_particles(star, invert=True).contrast == -1.0
    dark = load_particles(star, invert=False)
    assert dark.contrast == 1.0
    np.testing.assert_array_equal(dark.images([3]), images[[3]])
    # A dark stack is detected as such.
    write_stack(root / "data" / "particles.mrcs", -images, APIX)
    assert load_particles(star).contrast == 1.0


def test_missing_or_extra_companion_files(all_formats):
    root, _, _ = all_formats
    stack = root / "data" / "particles.mrcs"
    with pytest.raises(InputError) as err:
        load_particles(stack)
    assert str(stack) in str(err.value) and "--poses" in str(err.value) and "--ctf" in str(err.value)
    with pytest.raises(InputError, match="no --ctf"):
        load_particles(stack, poses=root / "data" / "poses.pkl")
    with pytest.raises(InputError, match="p.star: --poses"):
        load_particles(root / "star" / "p.star", poses=root / "data" / "poses.pkl")
    with pytest.raises(InputError, match="file type"):
        load_particles(root / "data" / "poses.pkl")
    with pytest.raises(InputError, match="output type"):
        write_particles(root / "x.txt", load_particles(root / "star" / "p.star"))


def test_cli_options(all_formats):
    root, ps, _ = all_formats
    parser = argparse.ArgumentParser()
    add_particle_args(parser)
    args = parser.parse_args([str(root / "star" / "p.star"), "--invert", "no", "--apix", "2.0"])
    assert args.invert == "no" and args.datadir is None
    got = particles_from_args(args)
    assert got.apix == 2.0 and got.contrast == 1.0
    np.testing.assert_allclose(got.shifts, ps.shifts, atol=1e-5)  # RELION 3.1 origins are in Å
    data = root / "data"
    args = parser.parse_args([str(data / "particles.mrcs"), "--poses", str(data / "poses.pkl"), "--ctf", str(data / "ctf.pkl")])
    assert args.invert == "auto"
    assert particles_from_args(args).contrast == -1.0
    with pytest.raises(SystemExit):
        parser.parse_args(["p.star", "--invert", "maybe"])
