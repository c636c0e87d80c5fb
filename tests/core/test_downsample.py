"""`cryospire downsample`: a stack Fourier-cropped on disk reads back as the same particles as
Fourier-cropped loading (`ParticleSet.at_box`) of the input, from RELION 3.1 / 3.0 `.star`,
cryoSPARC `.cs` and cryoDRGN inputs; chunked writing; refusals; an interrupted run."""

from __future__ import annotations

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryospire_core.cli.main import main
from cryospire_core.imaging.geometry import matrix_to_rotvec
from cryospire_core.io.atomic import TEMP_GLOB
from cryospire_core.io.load import ParticleSource
from cryospire_core.io.mrc import StackWriter
from cryospire_core.io.particles import ParticleSet
from cryospire_core.services import downsample
from cryospire_core.sim.simulate import simulate, write_simulation

N, D, B = 200, 64, 32
ALIGN = 1.5  # the .cs refinement's pixel size, in input pixels (a resampled refinement)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A simulated hinge (64 px, 200 white-particle images) and its particles as a RELION 3.1
    star with two optics groups and an extra column, a RELION 3.0 star (origins in pixels,
    pixel size per particle), a cryoSPARC .cs with its passthrough, and cryoDRGN pkls."""
    root = tmp_path_factory.mktemp("downsample")
    data = write_simulation(root / "data", simulate("hinge", D, N, snr=0.1, seed=2))
    sim = starfile.read(data / "particles.star", always_dict=True)
    apix = float(sim["optics"]["rlnImagePixelSize"].iloc[0])
    rows = sim["particles"].copy()
    rows["rlnImageName"] = [f"{i + 1:06d}@data/particles.mrcs" for i in range(N)]  # project-relative
    rows["rlnOpticsGroup"] = 1 + np.arange(N) % 2
    rows["rlnClassNumber"] = 1 + np.arange(N) % 3
    optics = pd.concat([sim["optics"], sim["optics"]], ignore_index=True)
    optics["rlnOpticsGroup"] = [1, 2]
    optics["rlnOpticsGroupName"] = ["opticsGroup1", "opticsGroup2"]
    optics["rlnVoltage"] = [300.0, 200.0]
    job = root / "Refine3D" / "job001"
    job.mkdir(parents=True)
    starfile.write({"optics": optics, "particles": rows}, job / "run_data.star")

    r30 = rows.drop(columns=["rlnOriginXAngst", "rlnOriginYAngst", "rlnOpticsGroup"])
    r30["rlnOriginX"] = rows["rlnOriginXAngst"] / apix
    r30["rlnOriginY"] = rows["rlnOriginYAngst"] / apix
    for col in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        r30[col] = optics[col].to_numpy()[rows["rlnOpticsGroup"].to_numpy() - 1]
    r30["rlnImagePixelSize"] = apix
    starfile.write(r30, job / "run_data_30.star")

    ps = ParticleSource(data / "particles.star", invert=True).load()
    main_cs = np.zeros(N, dtype=[("uid", "<u8"), ("blob/path", "S24"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
                                 ("blob/psize_A", "<f4"), ("blob/sign", "<f4"), ("alignments3D/pose", "<f4", (3,)),
                                 ("alignments3D/shift", "<f4", (2,)), ("alignments3D/psize_A", "<f4")])
    main_cs["uid"] = np.arange(10**12, 10**12 + N, dtype=np.uint64)[::-1]
    main_cs["blob/path"] = b">data/particles.mrcs"
    main_cs["blob/idx"] = np.arange(N)
    main_cs["blob/shape"] = D
    main_cs["blob/psize_A"] = apix
    main_cs["blob/sign"] = -1
    main_cs["alignments3D/pose"] = matrix_to_rotvec(ps.rotations)
    main_cs["alignments3D/shift"] = ps.shifts / (ALIGN * apix)
    main_cs["alignments3D/psize_A"] = ALIGN * apix
    pt = np.zeros(N, dtype=[("uid", "<u8"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"),
                            ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"),
                            ("ctf/exp_group_id", "<u4"), ("location/micrograph_path", "S12")])
    pt["uid"] = main_cs["uid"]
    for name, column in (("ctf/df1_A", 0), ("ctf/df2_A", 1), ("ctf/accel_kv", 3), ("ctf/cs_mm", 4),
                         ("ctf/amp_contrast", 5)):
        pt[name] = ps.ctf[:, column]
    pt["ctf/df_angle_rad"] = np.deg2rad(ps.ctf[:, 2])
    pt["ctf/exp_group_id"] = 1 + np.arange(N) % 2
    pt["location/micrograph_path"] = [f"mic{i % 4}.mrc".encode() for i in range(N)]
    (root / "J2").mkdir()
    for name, arr in (("J2_particles.cs", main_cs), ("J2_passthrough_particles.cs", pt)):
        with open(root / "J2" / name, "wb") as f:  # given a name, np.save would append .npy
            np.save(f, arr)
    return {"root": root, "apix": apix, "star": job / "run_data.star", "star30": job / "run_data_30.star",
            "cs": root / "J2" / "J2_particles.cs", "stack": data / "particles.mrcs",
            "poses": data / "poses.pkl", "ctf": data / "ctf.pkl"}


def _same_particles(out: ParticleSet, ref: ParticleSet, atol_shift: float = 1e-4, groups: bool = True) -> None:
    """``out`` (a downsampled stack read back) holds the particles ``ref`` (cropped loading) gives
    (and the same optics groups unless ``groups`` is False)."""
    assert (len(out), out.box, out.crop_box) == (len(ref), B, None)
    assert out.apix == pytest.approx(ref.apix, rel=1e-6)
    assert out.contrast == ref.contrast == -1.0  # white particles, detected in both
    idx = np.arange(len(ref))
    expected = ref.images(idx)
    np.testing.assert_allclose(out.images(idx), expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(out.rotations, ref.rotations, atol=1e-5)
    np.testing.assert_allclose(out.shifts, ref.shifts, atol=atol_shift)
    np.testing.assert_allclose(out.ctf, ref.ctf, rtol=1e-6, atol=1e-5)
    if groups:
        np.testing.assert_array_equal(out.optics_group, ref.optics_group)


def _check_stack(path, ref: ParticleSet) -> None:
    """The stack holds the cropped images as the input stack had them (white), float32, at the new pixel size."""
    with mrcfile.open(path) as m:
        assert m.data.dtype == np.float32 and m.data.shape == (len(ref), B, B)
        assert float(m.voxel_size.x) == pytest.approx(ref.apix, rel=1e-6)
        stored = ref.images(np.arange(len(ref))) * ref.contrast
        np.testing.assert_allclose(m.data, stored, rtol=0, atol=1e-6 * np.abs(stored).max())


def test_a_star_downsampled_on_disk_reads_as_cropped_loading(project, tmp_path):
    out = tmp_path / "small"
    assert main(["downsample", str(project["star"]), "--box", str(B), "--out", str(out), "--quiet"]) == 0
    ref = ParticleSource(project["star"]).load().at_box(B)
    assert ref.apix == pytest.approx(project["apix"] * D / B)
    _same_particles(ParticleSource(out / "particles.star").load(), ref)
    _check_stack(out / "particles.mrcs", ref)
    raw = starfile.read(out / "particles.star", always_dict=True)
    np.testing.assert_allclose(raw["optics"]["rlnImagePixelSize"], ref.apix)
    np.testing.assert_array_equal(raw["optics"]["rlnImageSize"], B)
    np.testing.assert_array_equal(raw["optics"]["rlnVoltage"], [300.0, 200.0])
    particles = raw["particles"]
    assert list(particles["rlnImageName"][:2]) == ["000001@particles.mrcs", "000002@particles.mrcs"]
    np.testing.assert_array_equal(particles["rlnClassNumber"], 1 + np.arange(N) % 3)  # every column kept
    np.testing.assert_allclose(particles[["rlnOriginXAngst", "rlnOriginYAngst"]], ref.shifts, atol=1e-5)
    assert sorted(p.name for p in out.iterdir()) == ["particles.mrcs", "particles.star"]


def test_a_relion30_star_gets_origins_in_angstrom(project, tmp_path):
    out = tmp_path / "small30"
    assert main(["downsample", str(project["star30"]), "--box", str(B), "--out", str(out), "--quiet"]) == 0
    ref = ParticleSource(project["star30"]).load().at_box(B)
    raw = starfile.read(out / "particles.star", always_dict=True)["particles"]
    assert "rlnOriginX" not in raw and "rlnImagePixelSize" not in raw  # pixels, and the old pixel size, are gone
    truth = starfile.read(project["star"], always_dict=True)["particles"]
    np.testing.assert_allclose(raw[["rlnOriginXAngst", "rlnOriginYAngst"]],
                               truth[["rlnOriginXAngst", "rlnOriginYAngst"]], atol=1e-5)
    _same_particles(ParticleSource(out / "particles.star").load(), ref)


def test_a_cs_downsampled_on_disk_reads_as_cropped_loading(project, tmp_path):
    out = tmp_path / "small_cs"
    assert main(["downsample", str(project["cs"]), "--box", str(B), "--out", str(out), "--quiet"]) == 0
    ref = ParticleSource(project["cs"]).load().at_box(B)
    assert sorted(p.name for p in out.iterdir()) == ["particles.cs", "particles.mrcs", "particles.star"]
    _same_particles(ParticleSource(out / "particles.cs").load(), ref, atol_shift=1e-3)
    # A STAR file holds optics groups of distinct (kV, Cs, w); these exposure groups share them.
    _same_particles(ParticleSource(out / "particles.star").load(), ref, atol_shift=1e-3, groups=False)
    _check_stack(out / "particles.mrcs", ref)
    raw, main_cs = np.load(out / "particles.cs"), np.load(project["cs"])
    np.testing.assert_array_equal(raw["blob/path"], b"particles.mrcs")
    np.testing.assert_array_equal(raw["blob/idx"], np.arange(N))
    np.testing.assert_array_equal(raw["blob/shape"], B)
    np.testing.assert_allclose(raw["blob/psize_A"], ref.apix, rtol=1e-6)
    np.testing.assert_allclose(raw["alignments3D/psize_A"], ref.apix, rtol=1e-6)
    # Shifts in pixels of the new pixel size: the input's (in pixels of ALIGN input pixels) scaled.
    np.testing.assert_allclose(raw["alignments3D/shift"], main_cs["alignments3D/shift"] * ALIGN * B / D, rtol=1e-5,
                               atol=1e-5)
    for name in ("uid", "blob/sign", "alignments3D/pose", "ctf/exp_group_id", "location/micrograph_path"):
        np.testing.assert_array_equal(raw[name], ParticleSource(project["cs"]).load().provenance.rows[name])


def test_cryodrgn_input(project, tmp_path):
    out = tmp_path / "small_drgn"
    args = [str(project["stack"]), "--poses", str(project["poses"]), "--ctf", str(project["ctf"])]
    assert main(["downsample", *args, "--box", str(B), "--out", str(out), "--quiet"]) == 0
    ref = ParticleSource(project["stack"], poses=project["poses"], ctf=project["ctf"]).load().at_box(B)
    _same_particles(ParticleSource(out / "particles.star").load(), ref)


def test_the_stack_is_written_one_chunk_at_a_time(project, tmp_path, monkeypatch):
    ps = ParticleSource(project["star"]).load().subset(np.arange(50))
    whole = downsample.check_outputs(tmp_path / "whole", project["star"], overwrite=False)
    downsample.downsample_particles(ps, B, whole)
    sizes = []
    append = StackWriter.append

    def recording(self, images):
        sizes.append(len(images))
        append(self, images)

    monkeypatch.setattr(StackWriter, "append", recording)
    seen = []
    chunked = downsample.check_outputs(tmp_path / "chunked", project["star"], overwrite=False)
    written = downsample.downsample_particles(ps, B, chunked, chunk=7, progress=lambda e: seen.append(e.done))
    assert sizes == [7] * 7 + [1] and seen == [7 * k for k in range(1, 8)] + [50]
    assert written.box == B and written.source.files == [chunked.stack]
    with mrcfile.open(whole.stack) as a, mrcfile.open(chunked.stack) as b:
        np.testing.assert_array_equal(a.data, b.data)
    assert whole.star.read_text().splitlines()[1:] == chunked.star.read_text().splitlines()[1:]  # after the date
    # The default chunk is a memory budget: 128 MiB of 64 px images is one chunk here.
    sizes.clear()
    downsample.downsample_particles(ps, B, downsample.check_outputs(tmp_path / "default", project["star"], False))
    assert sizes == [50]
    monkeypatch.setattr(downsample, "CHUNK_BYTES", 20 * D * D * 4)
    sizes.clear()
    downsample.downsample_particles(ps, B, downsample.check_outputs(tmp_path / "budget", project["star"], False))
    assert sizes == [20, 20, 10]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("cryospire downsample: error: ") and err.count("\n") == 1, err
    return err


def test_refusals_are_one_line(project, tmp_path, capsys):
    star, out = str(project["star"]), tmp_path / "out"
    assert main(["downsample", star, "--box", "33", "--out", str(out)]) == 1
    assert "--box: expected an even whole number" in _error(capsys)
    for box in (D, 2 * D):
        assert main(["downsample", star, "--box", str(box), "--out", str(out)]) == 1
        assert f"--box: expected an even box smaller than the stack's {D} px (of particles.mrcs), found {box} px" in \
            _error(capsys)
    assert not out.exists()
    assert main(["downsample", star, "--box", str(B), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    before = (out / "particles.mrcs").read_bytes()
    assert main(["downsample", star, "--box", "16", "--out", str(out)]) == 1
    assert "particles.mrcs: --out: expected a file name not in use (or --overwrite)" in _error(capsys)
    assert (out / "particles.mrcs").read_bytes() == before
    assert main(["downsample", star, "--box", "16", "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert ParticleSource(out / "particles.star").load().box == 16
    # Never into the input's own files, even with --overwrite.
    data = project["stack"].parent
    assert main(["downsample", str(data / "particles.star"), "--box", "16", "--out", str(data), "--overwrite"]) == 1
    assert "--out: expected a folder other than the input particles'" in _error(capsys)
    assert ParticleSource(data / "particles.star").load().box == D


def test_an_interrupted_run_leaves_no_particle_file(project, tmp_path, monkeypatch, capsys):
    star, out = str(project["star"]), tmp_path / "out"
    assert main(["downsample", star, "--box", str(B), "--out", str(out), "--quiet"]) == 0
    old_stack = (out / "particles.mrcs").read_bytes()
    images = ParticleSet.images
    calls = []

    def interrupted(self, idx):
        calls.append(idx)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return images(self, idx)

    monkeypatch.setattr(ParticleSet, "images", interrupted)
    monkeypatch.setattr(downsample, "CHUNK_BYTES", 10 * D * D * 4)
    calls.clear()
    assert main(["downsample", star, "--box", "16", "--out", str(out), "--overwrite", "--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err
    # The old metadata is gone before the stack is replaced, and the unfinished stack never
    # appears: nothing names a stack that is not what it says.
    assert sorted(p.name for p in out.iterdir()) == ["particles.mrcs"]
    assert (out / "particles.mrcs").read_bytes() == old_stack and not list(out.glob(TEMP_GLOB))
