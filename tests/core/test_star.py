"""star.py: RELION 3.0 / 3.1 files built here with the starfile package, read, written, subset."""

from dataclasses import replace

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from scipy.spatial.transform import Rotation

from cryospire_core.errors import InputError
from cryospire_core.io.mrc import write_stack
from cryospire_core.io.particles import Provenance
from cryospire_core.io.star import read_star, write_star

N, D, APIX = 50, 16, 1.25
STACK = "Extract/job001/parts.mrcs"  # project-relative, as RELION writes it


def _truth(seed=0):
    """Random particle parameters; rows reference the stack's images in shuffled order."""
    rng = np.random.default_rng(seed)
    t = {
        "frame": rng.permutation(N),
        "rot": rng.uniform(-180, 180, N),
        "tilt": rng.uniform(0, 180, N),
        "psi": rng.uniform(-180, 180, N),
        "ox": rng.uniform(-3, 3, N),
        "oy": rng.uniform(-3, 3, N),
        "dfu": rng.uniform(10000, 30000, N),
        "dfang": rng.uniform(0, 180, N),
        "phase": rng.uniform(0, 20, N),
        "group": rng.integers(1, 3, N),  # two optics groups
    }
    t["dfv"] = t["dfu"] - rng.uniform(0, 500, N)
    return t


OPTICS = {1: (300.0, 2.7, 0.1), 2: (200.0, 2.0, 0.07)}  # kV, Cs, w


def _particles_31(t):
    return pd.DataFrame(
        {
            "rlnImageName": [f"{f + 1:06d}@{STACK}" for f in t["frame"]],
            "rlnMicrographName": [f"MotionCorr/mic{f % 3}.mrc" for f in t["frame"]],
            "rlnAngleRot": t["rot"],
            "rlnAngleTilt": t["tilt"],
            "rlnAnglePsi": t["psi"],
            "rlnOriginXAngst": t["ox"],
            "rlnOriginYAngst": t["oy"],
            "rlnDefocusU": t["dfu"],
            "rlnDefocusV": t["dfv"],
            "rlnDefocusAngle": t["dfang"],
            "rlnPhaseShift": t["phase"],
            "rlnClassNumber": (t["frame"] % 4) + 1,
            "rlnLogLikeliContribution": t["dfu"] * 3.1,
            "rlnOpticsGroup": t["group"],
        }
    )


def _optics_31():
    return pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"],
            "rlnOpticsGroup": [1, 2],
            "rlnVoltage": [OPTICS[1][0], OPTICS[2][0]],
            "rlnSphericalAberration": [OPTICS[1][1], OPTICS[2][1]],
            "rlnAmplitudeContrast": [OPTICS[1][2], OPTICS[2][2]],
            "rlnImagePixelSize": [APIX, APIX],
            "rlnImageSize": [D, D],
            "rlnImageDimensionality": [2, 2],
        }
    )


def _particles_30(t):
    df = _particles_31(t).drop(columns=["rlnOriginXAngst", "rlnOriginYAngst", "rlnOpticsGroup"])
    opt = np.array([OPTICS[g] for g in t["group"]])
    df["rlnOriginX"] = t["ox"] / APIX
    df["rlnOriginY"] = t["oy"] / APIX
    df["rlnVoltage"], df["rlnSphericalAberration"], df["rlnAmplitudeContrast"] = opt.T
    df["rlnDetectorPixelSize"] = 5.0  # µm
    df["rlnMagnification"] = 5.0e4 / APIX
    return df


@pytest.fixture
def project(tmp_path):
    """A RELION-like project: stack in Extract/job001, 3.1 and 3.0 stars in Refine3D/job002."""
    t = _truth()
    images = np.random.default_rng(1).standard_normal((N, D, D)).astype(np.float32)
    write_stack(tmp_path / STACK, images, APIX)
    job = tmp_path / "Refine3D" / "job002"
    job.mkdir(parents=True)
    starfile.write({"optics": _optics_31(), "particles": _particles_31(t)}, job / "run_data.star")
    starfile.write(_particles_30(t), job / "run_data_30.star")
    return tmp_path, job, t, images


def _check_truth(ps, t, images):
    assert len(ps) == N and ps.box == D and ps.apix == pytest.approx(APIX)
    angles = np.column_stack([t["rot"], t["tilt"], t["psi"]])
    ref = np.swapaxes(Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix(), 1, 2)
    np.testing.assert_allclose(ps.rotations, ref, atol=1e-5)
    np.testing.assert_allclose(ps.shifts, np.column_stack([t["ox"], t["oy"]]), atol=1e-5)
    opt = np.array([OPTICS[g] for g in t["group"]])
    expected_ctf = np.column_stack([t["dfu"], t["dfv"], t["dfang"], opt, t["phase"], np.zeros(N), np.ones(N)])
    np.testing.assert_allclose(ps.ctf, expected_ctf, atol=1e-5)
    np.testing.assert_array_equal(ps.images(np.arange(N)), images[t["frame"]])


def test_read_relion31(project):
    _, job, t, images = project
    ps = read_star(job / "run_data.star")
    _check_truth(ps, t, images)
    np.testing.assert_array_equal(ps.optics_group, t["group"])
    assert ps.provenance.format == "relion3.1"
    assert list(ps.provenance.rows.columns) == list(_particles_31(t).columns)
    assert len(ps.provenance.extra["optics"]) == 2


def test_relion30_and_31_read_identically(project):
    _, job, t, images = project
    a = read_star(job / "run_data.star")
    b = read_star(job / "run_data_30.star")
    assert b.provenance.format == "relion3.0"
    _check_truth(b, t, images)
    assert a.apix == pytest.approx(b.apix, rel=1e-9)
    for name in ("rotations", "shifts", "ctf"):  # 6-decimal text: pixel and Å origins differ by rounding
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-5)
    np.testing.assert_array_equal(a.images(np.arange(N)), b.images(np.arange(N)))
    # Distinct (kV, Cs, w) become the 3.0 file's optics groups, in sorted order.
    np.testing.assert_array_equal(b.optics_group, np.where(t["group"] == 1, 2, 1))


def test_star_to_matrices_to_star(project):
    root, job, t, images = project
    ps = read_star(job / "run_data.star")
    fresh = replace(ps, provenance=Provenance("simulated", root / "sim"))  # forget the original rows
    out = root / "out" / "new.star"
    write_star(out, fresh)
    raw = starfile.read(out, always_dict=True)
    assert set(raw) == {"optics", "particles"}
    assert len(raw["optics"]) == 2 and np.all(raw["optics"]["rlnImagePixelSize"] == APIX)
    assert raw["particles"]["rlnImageName"].iloc[0].endswith("@../Extract/job001/parts.mrcs")
    again = read_star(out)
    _check_truth(again, t, images)
    for name in ("rotations", "shifts", "ctf"):
        np.testing.assert_allclose(getattr(again, name), getattr(ps, name), atol=1e-5)
    # Image paths relative to a chosen folder (here the project directory).
    write_star(out, fresh, image_paths_relative_to=root)
    assert starfile.read(out)["particles"]["rlnImageName"].iloc[0].endswith(f"@{STACK}")
    np.testing.assert_array_equal(read_star(out, datadir=root).images(np.arange(N)), images[t["frame"]])


def test_subset_keeps_every_column_row_order_and_stacks(project):
    root, job, t, images = project
    ps = read_star(job / "run_data.star")
    idx = np.random.default_rng(5).choice(N, 20, replace=False)
    out = root / "Select" / "job003" / "deep" / "particles.star"
    write_star(out, ps.subset(idx))

    raw = starfile.read(out, always_dict=True)
    orig = _particles_31(t).iloc[idx].reset_index(drop=True)
    sub = raw["particles"]
    assert list(sub.columns) == list(orig.columns)
    for col in orig.columns:
        if col == "rlnImageName":
            continue
        if orig[col].dtype.kind == "f":
            np.testing.assert_allclose(sub[col].to_numpy(), orig[col].to_numpy(), atol=1e-6)
        else:
            np.testing.assert_array_equal(sub[col].to_numpy(), orig[col].to_numpy())
    numbers = sub["rlnImageName"].str.split("@").str[0].astype(int).to_numpy()
    np.testing.assert_array_equal(numbers, t["frame"][idx] + 1)
    assert set(sub["rlnImageName"].str.split("@").str[1]) == {"../../../Extract/job001/parts.mrcs"}
    pd.testing.assert_frame_equal(raw["optics"], _optics_31(), check_dtype=False)

    again = read_star(out)
    np.testing.assert_array_equal(again.images(np.arange(20)), images[t["frame"][idx]])
    np.testing.assert_allclose(again.rotations, ps.rotations[idx], atol=1e-5)


def test_relion30_subset_is_written_as_31(project):
    root, job, t, images = project
    ps = read_star(job / "run_data_30.star")
    idx = np.arange(N)[::-3]
    out = root / "sub30.star"
    write_star(out, ps.subset(idx))
    raw = starfile.read(out, always_dict=True)
    cols = list(raw["particles"].columns)
    assert "rlnOriginXAngst" in cols and "rlnOriginX" not in cols and "rlnOpticsGroup" in cols
    assert set(_particles_30(t).columns) - {"rlnOriginX", "rlnOriginY"} <= set(cols)
    again = read_star(out)
    assert again.provenance.format == "relion3.1"
    np.testing.assert_allclose(again.shifts, ps.shifts[idx], atol=1e-5)
    np.testing.assert_allclose(again.ctf, ps.ctf[idx], atol=1e-5)
    np.testing.assert_array_equal(again.images(np.arange(len(idx))), images[t["frame"][idx]])


def test_stack_search_order(project):
    root, job, t, images = project
    # Moved star (deeper than the parent folders searched): found through datadir (full
    # relative path, then bare name).
    moved = root / "x1" / "x2" / "x3" / "x4" / "a.star"
    moved.parent.mkdir(parents=True)
    (job / "run_data.star").rename(moved)
    with pytest.raises(InputError) as err:
        read_star(moved)
    msg = str(err.value)
    assert str(moved) in msg and "rlnImageName" in msg and STACK in msg and "no such file" in msg
    assert read_star(moved, datadir=root).box == D
    assert read_star(moved, datadir=root / "Extract" / "job001").box == D
    # Bare file name beside the star.
    (root / STACK).rename(moved.parent / "parts.mrcs")
    np.testing.assert_array_equal(read_star(moved).images([0]), images[t["frame"][:1]])


def _write_31(path, particles, optics=None):
    starfile.write({"optics": _optics_31() if optics is None else optics, "particles": particles}, path)
    return path


def test_errors_name_file_and_field(project):
    root, job, t, _ = project
    p = _particles_31(t)

    too_many = p.copy()
    too_many.loc[0, "rlnImageName"] = f"{N + 1:06d}@{STACK}"
    star = _write_31(job / "too_many.star", too_many)
    with pytest.raises(InputError) as err:
        read_star(star)
    msg = str(err.value)
    assert str(star) in msg and "rlnImageName" in msg and f"1..{N}" in msg and f"found {N + 1}" in msg

    star = _write_31(job / "no_ctf.star", p.drop(columns=["rlnDefocusU", "rlnDefocusAngle"]))
    with pytest.raises(InputError) as err:
        read_star(star)
    assert str(star) in str(err.value) and "rlnDefocusU, rlnDefocusAngle" in str(err.value)

    star = _write_31(job / "no_cs.star", p, _optics_31().drop(columns=["rlnSphericalAberration"]))
    with pytest.raises(InputError, match="rlnSphericalAberration"):
        read_star(star)

    bad_group = p.copy()
    bad_group.loc[3, "rlnOpticsGroup"] = 7
    with pytest.raises(InputError, match="rlnOpticsGroup.*found 7"):
        read_star(_write_31(job / "group.star", bad_group))

    bad_name = p.copy()
    bad_name.loc[2, "rlnImageName"] = f"abc@{STACK}"
    with pytest.raises(InputError, match="rlnImageName.*abc@"):
        read_star(_write_31(job / "name.star", bad_name))

    with mrcfile.new(root / "rect.mrcs") as m:
        m.set_data(np.zeros((N, 16, 12), np.float32))
    rect = p.copy()
    rect["rlnImageName"] = [f"{i + 1:06d}@../../rect.mrcs" for i in range(N)]
    with pytest.raises(InputError) as err:
        read_star(_write_31(job / "rect.star", rect))
    assert "rect.mrcs" in str(err.value) and "square" in str(err.value)

    no_apix = _particles_30(t).drop(columns=["rlnDetectorPixelSize", "rlnMagnification"])
    starfile.write(no_apix, job / "no_apix.star")
    with pytest.raises(InputError, match="rlnImagePixelSize"):
        read_star(job / "no_apix.star")
    ps = read_star(job / "no_apix.star", apix=APIX)
    np.testing.assert_allclose(ps.shifts, np.column_stack([t["ox"], t["oy"]]), atol=1e-5)

    with pytest.raises(InputError, match="no such file"):
        read_star(job / "absent.star")


def test_values_checked_and_comments_skipped(project):
    """Physics checks name the column, the first bad particle and its optics group; an unusual
    defocus reads with a warning; comment lines in loop headers are skipped, as RELION does."""
    root, job, t, _ = project
    p = _particles_31(t)
    optics = _optics_31()
    optics.loc[1, "rlnVoltage"] = 0.0
    first = int(np.argmax(t["group"] == 2)) + 1
    with pytest.raises(InputError, match=rf"rlnVoltage: expected a voltage in kV, > 0 .*found 0 at particle {first}, "
                                         rf"optics group 2 \({int((t['group'] == 2).sum())} of {N} particles\)"):
        read_star(_write_31(job / "kv.star", p, optics))

    far = p.copy()
    far["rlnDefocusU"] = 4e5
    with pytest.warns(UserWarning, match=rf"rlnDefocusU: {N} of {N} particles outside the usual defocus"):
        assert len(read_star(_write_31(job / "far.star", far))) == N

    plain = _write_31(job / "plain.star", p)
    commented = job / "commented.star"
    commented.write_text(plain.read_text().replace("loop_\n", "loop_\n# a comment\n\n").replace(
        "_rlnAngleTilt #", "# between labels\n_rlnAngleTilt #"))
    a, b = read_star(plain), read_star(commented)
    np.testing.assert_array_equal(a.ctf, b.ctf)
    np.testing.assert_array_equal(a.rotations, b.rotations)

    twice = job / "twice.star"
    twice.write_text(plain.read_text() + plain.read_text()[plain.read_text().index("data_particles"):])
    with pytest.raises(InputError, match=r"data_particles: expected one data_particles block .*found 2 blocks"):
        read_star(twice)


def test_a_failed_parse_leaves_nothing_behind_for_the_next_read(project, monkeypatch):
    """starfile reads lines through linecache and clears it only after a successful parse: a
    malformed file must not leave its lines for the next read of the same (relative) name, as in
    napari when the user fixes the file and opens it again."""
    _, job, t, images = project
    monkeypatch.chdir(job)
    good = (job / "run_data.star").read_text()
    broken = good.replace("\n", "\t99\n", good.count("\n") - 1)[:-1]  # an extra field on the rows
    (job / "edit.star").write_text(broken)
    with pytest.raises(InputError, match=r"edit\.star: STAR syntax"):
        read_star("edit.star")
    (job / "edit.star").write_text(good)
    _check_truth(read_star("edit.star"), t, images)
