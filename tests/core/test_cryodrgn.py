"""cryodrgn.py: stacks with poses.pkl / ctf.pkl pickled here with plain pickle; pkl <-> star."""

import pickle
from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryospire_core.errors import InputError
from cryospire_core.io.cryodrgn import (
    read_stack_with_pkls,
    write_ctf_pkl,
    write_poses_pkl,
)
from cryospire_core.io.mrc import write_stack
from cryospire_core.io.particles import Provenance
from cryospire_core.io.safe_pickle import load_pickle
from cryospire_core.io.star import read_star, write_star

N, D, APIX = 50, 16, 1.25


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((N, D, D)).astype(np.float32)
    write_stack(tmp_path / "particles.mrcs", images, APIX)
    rots = np.swapaxes(Rotation.random(N, random_state=2).as_matrix(), 1, 2).astype(np.float32)
    trans = rng.uniform(-0.1, 0.1, (N, 2)).astype(np.float32)
    ctf = np.zeros((N, 9), np.float32)
    ctf[:, 0], ctf[:, 1] = D, APIX
    ctf[:, 2] = rng.uniform(10000, 30000, N)
    ctf[:, 3] = ctf[:, 2] - rng.uniform(0, 500, N)
    ctf[:, 4] = rng.uniform(0, 180, N)
    ctf[:, 5:8] = 300, 2.7, 0.1
    ctf[:, 8] = rng.uniform(0, 10, N)
    _dump(tmp_path / "poses.pkl", (rots, trans))
    _dump(tmp_path / "ctf.pkl", ctf)
    return tmp_path, images, rots, trans, ctf


def test_read_stack_with_pkls(data):
    d, images, rots, trans, ctf = data
    ps = read_stack_with_pkls(d / "particles.mrcs", d / "poses.pkl", d / "ctf.pkl")
    assert len(ps) == N and ps.box == D and ps.apix == pytest.approx(APIX)
    np.testing.assert_allclose(ps.rotations, rots, atol=1e-7)
    np.testing.assert_allclose(ps.shifts, trans.astype(np.float64) * D * APIX, atol=1e-6)
    np.testing.assert_allclose(ps.ctf[:, :7], ctf[:, 2:9])
    np.testing.assert_array_equal(ps.ctf[:, 7:], np.tile([0, 1], (N, 1)))
    np.testing.assert_array_equal(ps.images(np.arange(N)), images)
    assert ps.provenance.format == "cryodrgn"


def test_txt_stack_list_and_old_pose_tuple(data):
    d, images, rots, trans, ctf = data
    sub = d / "stacks"
    write_stack(sub / "a.mrcs", images[:20], APIX)
    write_stack(sub / "b.mrcs", images[20:], APIX)
    (d / "list.txt").write_text("stacks/a.mrcs\n\nstacks/b.mrcs\n")
    euler = np.zeros((N, 3))
    _dump(d / "poses3.pkl", (rots, trans, euler))
    ps = read_stack_with_pkls(d / "list.txt", d / "poses3.pkl", d / "ctf.pkl")
    np.testing.assert_array_equal(ps.images(np.arange(N)), images)
    np.testing.assert_allclose(ps.rotations, rots, atol=1e-7)
    # Lines relative to datadir when not beside the list.
    (d / "elsewhere").mkdir()
    (d / "elsewhere" / "list.txt").write_text("a.mrcs\nb.mrcs\n")
    ps = read_stack_with_pkls(d / "elsewhere" / "list.txt", d / "poses.pkl", d / "ctf.pkl", datadir=sub)
    assert len(ps) == N


def test_pkl_to_star_to_pkl(data):
    d, images, rots, trans, ctf = data
    ps = read_stack_with_pkls(d / "particles.mrcs", d / "poses.pkl", d / "ctf.pkl")
    write_star(d / "out" / "p.star", ps)
    star = read_star(d / "out" / "p.star")
    np.testing.assert_allclose(star.rotations, ps.rotations, atol=1e-5)
    np.testing.assert_allclose(star.shifts, ps.shifts, atol=1e-5)
    np.testing.assert_allclose(star.ctf, ps.ctf, atol=1e-5)
    np.testing.assert_array_equal(star.images(np.arange(N)), images)

    write_poses_pkl(d / "out" / "poses.pkl", star)
    write_ctf_pkl(d / "out" / "ctf.pkl", star)
    r, t = load_pickle(d / "out" / "poses.pkl")
    assert r.dtype == np.float32 and r.shape == (N, 3, 3) and t.shape == (N, 2)
    np.testing.assert_allclose(r, rots, atol=1e-5)
    np.testing.assert_allclose(t * D * APIX, trans * D * APIX, atol=1e-5)
    c = load_pickle(d / "out" / "ctf.pkl")
    assert c.dtype == np.float32 and c.shape == (N, 9)
    np.testing.assert_allclose(c, ctf, rtol=1e-6, atol=1e-5)
    again = read_stack_with_pkls(d / "particles.mrcs", d / "out" / "poses.pkl", d / "out" / "ctf.pkl")
    for name in ("rotations", "shifts", "ctf"):
        np.testing.assert_allclose(getattr(again, name), getattr(ps, name), rtol=1e-6, atol=1e-5)


def test_star_to_pkl_matches_independent_formula(data):
    """Shifts in pkls are RELION origins / (apix * D); rots are A itself."""
    d, images, rots, trans, ctf = data
    ps = read_stack_with_pkls(d / "particles.mrcs", d / "poses.pkl", d / "ctf.pkl")
    ps = replace(ps, shifts=np.tile([1.25, -2.5], (N, 1)), provenance=Provenance("simulated", d))
    write_poses_pkl(d / "p.pkl", ps)
    np.testing.assert_allclose(load_pickle(d / "p.pkl")[1], np.tile([1.25, -2.5], (N, 1)) / (APIX * D), rtol=1e-6)


def test_errors_name_file_and_field(data):
    d, images, rots, trans, ctf = data
    stack, poses = d / "particles.mrcs", d / "poses.pkl"

    wrong_box = ctf.copy()
    wrong_box[:, 0] = 32
    _dump(d / "ctf_box.pkl", wrong_box)
    with pytest.raises(InputError) as err:
        read_stack_with_pkls(stack, poses, d / "ctf_box.pkl")
    assert "ctf_box.pkl" in str(err.value) and "column 0" in str(err.value) and "found 32" in str(err.value)

    wrong_apix = ctf.copy()
    wrong_apix[:, 1] = 2.0
    _dump(d / "ctf_apix.pkl", wrong_apix)
    with pytest.raises(InputError, match="ctf_apix.pkl: column 1"):
        read_stack_with_pkls(stack, poses, d / "ctf_apix.pkl")
    assert read_stack_with_pkls(stack, poses, d / "ctf_apix.pkl", apix=2.0).apix == 2.0

    _dump(d / "ctf_rows.pkl", ctf[:-1])
    with pytest.raises(InputError, match="ctf_rows.pkl: ctf parameters"):
        read_stack_with_pkls(stack, poses, d / "ctf_rows.pkl")

    _dump(d / "poses_n.pkl", (rots[:-1], trans[:-1]))
    with pytest.raises(InputError, match="poses_n.pkl: rots"):
        read_stack_with_pkls(stack, d / "poses_n.pkl", d / "ctf.pkl")

    _dump(d / "poses_bad.pkl", (rots * 2, trans))
    with pytest.raises(InputError, match="poses_bad.pkl: rots: expected rotation matrices"):
        read_stack_with_pkls(stack, d / "poses_bad.pkl", d / "ctf.pkl")

    with pytest.raises(InputError, match="absent.mrcs.*no such file"):
        read_stack_with_pkls(d / "absent.mrcs", poses, d / "ctf.pkl")
    (d / "missing.txt").write_text("particles.mrcs\nnot_there.mrcs\n")
    with pytest.raises(InputError, match="missing.txt.*not_there.mrcs"):
        read_stack_with_pkls(d / "missing.txt", poses, d / "ctf.pkl")
