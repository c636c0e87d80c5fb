"""cryosparc.py: .cs files (and passthrough files) built here with numpy, read and written."""

from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryospire_core.errors import InputError
from cryospire_core.io.cryosparc import read_cs, write_cs
from cryospire_core.io.mrc import write_stack
from cryospire_core.io.particles import Provenance

N, D, APIX = 50, 16, 1.25
ALIGN_PSIZE = 2 * APIX  # the refinement ran on a 2x binned copy of the stack


@pytest.fixture
def project(tmp_path):
    """A cryoSPARC-like project: stack in J1/imported, particles + passthrough in J2."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((N, D, D)).astype(np.float32)
    write_stack(tmp_path / "J1" / "imported" / "stack.mrcs", images, APIX)
    uid = rng.permutation(np.arange(10**12, 10**12 + N, dtype=np.uint64))
    frames = rng.permutation(N)
    main = np.zeros(
        N,
        dtype=[
            ("uid", "<u8"),
            ("blob/path", "S24"),
            ("blob/idx", "<u4"),
            ("blob/shape", "<u4", (2,)),
            ("blob/psize_A", "<f4"),
            ("blob/sign", "<f4"),
            ("alignments3D/pose", "<f4", (3,)),
            ("alignments3D/shift", "<f4", (2,)),
            ("alignments3D/psize_A", "<f4"),
            ("alignments3D/error", "<f4"),
        ],
    )
    main["uid"] = uid
    main["blob/path"] = b">J1/imported/stack.mrcs"
    main["blob/idx"] = frames
    main["blob/shape"] = D
    main["blob/psize_A"] = APIX
    main["blob/sign"] = -1
    main["alignments3D/pose"] = Rotation.random(N, random_state=1).as_rotvec()
    main["alignments3D/shift"] = rng.uniform(-2, 2, (N, 2))
    main["alignments3D/psize_A"] = ALIGN_PSIZE
    main["alignments3D/error"] = rng.uniform(0, 1, N)
    order = rng.permutation(N)  # passthrough rows in another order: joined on uid
    pt = np.zeros(
        N,
        dtype=[
            ("uid", "<u8"),
            ("ctf/accel_kv", "<f4"),
            ("ctf/cs_mm", "<f4"),
            ("ctf/amp_contrast", "<f4"),
            ("ctf/df1_A", "<f4"),
            ("ctf/df2_A", "<f4"),
            ("ctf/df_angle_rad", "<f4"),
            ("ctf/phase_shift_rad", "<f4"),
            ("ctf/exp_group_id", "<u4"),
            ("location/micrograph_path", "S20"),
        ],
    )
    pt["uid"] = uid[order]
    pt["ctf/accel_kv"] = 300
    pt["ctf/cs_mm"] = 2.7
    pt["ctf/amp_contrast"] = 0.1
    pt["ctf/df1_A"] = rng.uniform(10000, 30000, N)
    pt["ctf/df2_A"] = pt["ctf/df1_A"] - rng.uniform(0, 500, N)
    pt["ctf/df_angle_rad"] = rng.uniform(0, np.pi, N)
    pt["ctf/phase_shift_rad"] = rng.uniform(0, 0.3, N)
    pt["ctf/exp_group_id"] = 1
    pt["location/micrograph_path"] = b"J0/mic.mrc"
    job = tmp_path / "J2"
    job.mkdir()
    for name, arr in (("J2_particles.cs", main), ("J2_passthrough_particles.cs", pt)):
        with open(job / name, "wb") as f:
            np.save(f, arr)
    return tmp_path, job, main, pt[np.argsort(order)], images


def test_read_cs_with_passthrough(project):
    root, job, main, pt, images = project
    ps = read_cs(job / "J2_particles.cs")
    assert len(ps) == N and ps.box == D and ps.apix == pytest.approx(APIX)
    ref = np.swapaxes(Rotation.from_rotvec(main["alignments3D/pose"].astype(np.float64)).as_matrix(), 1, 2)
    np.testing.assert_allclose(ps.rotations, ref, atol=1e-9)
    np.testing.assert_allclose(ps.shifts, main["alignments3D/shift"].astype(np.float64) * ALIGN_PSIZE, atol=1e-6)
    np.testing.assert_allclose(ps.ctf[:, 0], pt["ctf/df1_A"])
    np.testing.assert_allclose(ps.ctf[:, 1], pt["ctf/df2_A"])
    np.testing.assert_allclose(ps.ctf[:, 2], np.rad2deg(pt["ctf/df_angle_rad"].astype(np.float64)))
    np.testing.assert_allclose(ps.ctf[:, 3:6], np.tile([300, 2.7, 0.1], (N, 1)), rtol=1e-6)
    np.testing.assert_allclose(ps.ctf[:, 6], np.rad2deg(pt["ctf/phase_shift_rad"].astype(np.float64)))
    np.testing.assert_array_equal(ps.ctf[:, 7:], np.tile([0, 1], (N, 1)))
    np.testing.assert_array_equal(ps.optics_group, 1)
    np.testing.assert_array_equal(ps.images(np.arange(N)), images[main["blob/idx"]])
    assert ps.provenance.format == "cryosparc"
    assert ps.provenance.extra["passthrough"].name == "J2_passthrough_particles.cs"
    # Explicit passthrough and datadir (the project directory) give the same result.
    other = read_cs(job / "J2_particles.cs", passthrough=job / "J2_passthrough_particles.cs", datadir=root)
    np.testing.assert_array_equal(other.ctf, ps.ctf)


def test_cs_to_matrices_to_cs(project):
    root, job, main, pt, images = project
    ps = read_cs(job / "J2_particles.cs")
    fresh = replace(ps, provenance=Provenance("simulated", root / "sim"))
    out = root / "export" / "particles.cs"
    write_cs(out, fresh)
    assert sorted(p.name for p in out.parent.iterdir()) == ["particles.cs"]  # no .npy appended
    raw = np.load(out)
    assert raw["blob/path"][0] == b"../J1/imported/stack.mrcs"
    assert len(np.unique(raw["uid"])) == N
    again = read_cs(out)
    np.testing.assert_allclose(again.rotations, ps.rotations, atol=1e-6)  # float32 fields
    np.testing.assert_allclose(again.shifts, ps.shifts, atol=1e-5)
    np.testing.assert_allclose(again.ctf, ps.ctf, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(again.images(np.arange(N)), images[main["blob/idx"]])


def test_subset_keeps_every_field(project):
    root, job, main, pt, images = project
    ps = read_cs(job / "J2_particles.cs")
    idx = np.random.default_rng(3).choice(N, 17, replace=False)
    out = job / "subset.cs"
    write_cs(out, ps.subset(idx))
    raw = np.load(out)
    assert set(raw.dtype.names) == set(main.dtype.names) | set(pt.dtype.names)
    for name in main.dtype.names:
        np.testing.assert_array_equal(raw[name], main[name][idx])
    for name in pt.dtype.names:
        np.testing.assert_array_equal(raw[name], pt[name][idx])
    again = read_cs(out)
    np.testing.assert_array_equal(again.images(np.arange(17)), images[main["blob/idx"][idx]])
    np.testing.assert_allclose(again.rotations, ps.rotations[idx], atol=1e-12)


def test_errors_name_file_and_field(project):
    root, job, main, pt, _ = project
    lonely = root / "lonely"
    lonely.mkdir()
    with open(lonely / "p.cs", "wb") as f:
        np.save(f, main)
    with pytest.raises(InputError) as err:
        read_cs(lonely / "p.cs", datadir=root)
    assert str(lonely / "p.cs") in str(err.value) and "ctf/df1_A" in str(err.value)

    bad = main.copy()
    bad["blob/idx"][4] = N
    with open(job / "bad_idx.cs", "wb") as f:
        np.save(f, bad)
    with pytest.raises(InputError) as err:
        read_cs(job / "bad_idx.cs", passthrough=job / "J2_passthrough_particles.cs")
    assert "bad_idx.cs" in str(err.value) and "blob/idx" in str(err.value) and "stack.mrcs" in str(err.value)

    moved = main.copy()
    moved["blob/path"] = b">J9/gone.mrcs"
    with open(job / "gone.cs", "wb") as f:
        np.save(f, moved)
    with pytest.raises(InputError) as err:
        read_cs(job / "gone.cs")
    assert "gone.cs" in str(err.value) and "blob/path" in str(err.value) and "J9/gone.mrcs" in str(err.value)

    few = pt[: N - 1]
    with open(job / "few_passthrough.cs", "wb") as f:
        np.save(f, few)
    with pytest.raises(InputError, match="uid.*1 uids missing"):
        read_cs(job / "J2_particles.cs", passthrough=job / "few_passthrough.cs")

    (job / "compressed.cs").write_bytes(b"\x94CSDAT" + bytes(100))
    with pytest.raises(InputError, match="compressed.cs: cs format: expected a numpy .npy"):
        read_cs(job / "compressed.cs")

    with open(job / "objects.cs", "wb") as f:
        np.save(f, np.array([("a", 1)], dtype=[("blob/path", "O"), ("uid", "<u8")]), allow_pickle=True)
    with pytest.raises(InputError, match="pickled objects"):
        read_cs(job / "objects.cs")
