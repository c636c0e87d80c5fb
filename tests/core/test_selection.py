"""Particle selections: index files and .star/.cs subsets map to the same indices."""

from __future__ import annotations

import numpy as np
import pytest

from cryospire_core.errors import InputError
from cryospire_core.io.cryosparc import write_cs
from cryospire_core.io.load import load_particles
from cryospire_core.io.selection import read_selection
from cryospire_core.io.star import write_star


@pytest.fixture(scope="module")
def particles(homogeneous_32):
    return load_particles(homogeneous_32 / "particles.star")


def test_index_files_and_particle_subsets_agree(particles, tmp_path):
    keep = np.sort(np.random.default_rng(0).choice(len(particles), 300, replace=False))
    np.save(tmp_path / "idx.npy", keep[::-1])  # any order, sorted on reading
    np.savetxt(tmp_path / "idx.txt", keep, fmt="%d")
    mask = np.zeros(len(particles), bool)
    mask[keep] = True
    np.save(tmp_path / "mask.npy", mask)
    write_star(tmp_path / "subset.star", particles.subset(keep))
    write_cs(tmp_path / "subset.cs", particles.subset(keep))
    for name in ("idx.npy", "idx.txt", "mask.npy", "subset.star", "subset.cs"):
        np.testing.assert_array_equal(read_selection(tmp_path / name, particles), keep, err_msg=name)


def test_bad_selections_name_the_file(particles, homogeneous_32, tmp_path):
    np.savetxt(tmp_path / "big.txt", [0, len(particles)], fmt="%d")
    np.savetxt(tmp_path / "frac.txt", [0.5])
    (tmp_path / "empty.txt").write_text("")
    for name, says in (("big.txt", "indices in 0..1999"), ("frac.txt", "whole-number"), ("empty.txt", "at least one"),
                       ("missing.npy", "no such file")):
        with pytest.raises(InputError, match=says) as info:
            read_selection(tmp_path / name, particles)
        assert name in str(info.value)
    # A subset of other particles (here: the first 10 of the set, matched against a set of 5).
    write_star(tmp_path / "other.star", particles.subset(np.arange(10)))
    with pytest.raises(InputError, match="5 images not among them"):
        read_selection(tmp_path / "other.star", particles.subset(np.arange(5)))
