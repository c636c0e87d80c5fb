"""Readers: maps, stacks, particle metadata and run folders become layers of the right shape,
dtype, scale and translate; files that are not ours are declined; broken ones reach the user
as the InputError text."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
from napari.layers import Layer

from cryospire_core.errors import InputError
from cryospire_core.io.load import load_particles, write_particles
from cryospire_core.io.mrc import write_map, write_stack
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_napari import _layers
from cryospire_napari._reader import (
    get_map_reader,
    get_particles_reader,
    get_run_reader,
    get_stack_reader,
)

PLUGIN = "cryospire-napari"


def read_one(get_reader, path):
    reader = get_reader(str(path))
    assert reader is not None
    return reader(str(path))


def blob_map(D: int, at_zyx: tuple[int, int, int]) -> np.ndarray:
    zz, yy, xx = np.mgrid[:D, :D, :D]
    r2 = (zz - at_zyx[0]) ** 2 + (yy - at_zyx[1]) ** 2 + (xx - at_zyx[2]) ** 2
    return np.exp(-r2 / 2.0).astype(np.float32)


def test_map_reader_scale_translate_and_world_coordinates(tmp_path):
    D, apix = 16, 2.5
    vol = blob_map(D, (3, 9, 12))
    write_map(tmp_path / "emd_1.mrc", vol.astype(np.float64), apix)
    ((data, kw, kind),) = read_one(get_map_reader, tmp_path / "emd_1.mrc")
    assert kind == "image" and data.dtype == np.float32 and data.shape == (D, D, D)
    np.testing.assert_array_equal(data, vol)
    assert kw["name"] == "emd_1" and kw["rendering"] == "iso"
    assert kw["scale"] == (apix,) * 3
    assert kw["translate"] == (-(D // 2) * apix,) * 3
    lo, hi = kw["contrast_limits"]
    assert lo == 0.0 and hi == pytest.approx(1.0) and 0 < kw["iso_threshold"] < 1
    layer = Layer.create(data, kw, kind)
    # Voxel (z, y, x) = (3, 9, 12) sits at ((i - D // 2) * apix) Å: the core's lattice convention.
    np.testing.assert_allclose(layer.data_to_world([3, 9, 12]), (np.array([3, 9, 12]) - D // 2) * apix)


def test_map_reader_non_cubic_and_dot_map(tmp_path):
    vol = np.random.default_rng(0).normal(size=(6, 8, 10)).astype(np.float32)
    write_map(tmp_path / "box.map", vol, 1.2)
    ((data, kw, _),) = read_one(get_map_reader, tmp_path / "box.map")
    assert data.shape == (6, 8, 10)
    assert kw["translate"] == pytest.approx((-3 * 1.2, -4 * 1.2, -5 * 1.2))


def test_stack_reader_is_lazy_and_exact(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(40, 12, 12)).astype(np.float32)
    write_stack(tmp_path / "parts.mrcs", images, apix=3.0)
    ((data, kw, kind),) = read_one(get_stack_reader, tmp_path / "parts.mrcs")
    assert kind == "image" and data.shape == (40, 12, 12) and data.dtype == np.float32
    assert not isinstance(data, np.ndarray)  # a dask array: images are read when displayed
    np.testing.assert_array_equal(np.asarray(data[7]), images[7])
    np.testing.assert_array_equal(np.asarray(data[5:9, 2:4]), images[5:9, 2:4])
    assert kw["scale"] == (1.0, 3.0, 3.0) and kw["translate"] == (0.0, -18.0, -18.0)
    assert kw["metadata"]["n"] == 40


def test_mrc_stack_opens_as_stack_not_as_map(tmp_path):
    images = np.random.default_rng(2).normal(size=(30, 10, 10)).astype(np.float32)
    write_stack(tmp_path / "J12_particles.mrc", images, apix=1.5)  # cryoSPARC names stacks .mrc
    ((data, kw, _),) = read_one(get_map_reader, tmp_path / "J12_particles.mrc")
    assert kw["metadata"]["kind"] == "particle stack" and data.shape == (30, 10, 10)
    np.testing.assert_array_equal(np.asarray(data[29]), images[29])


def test_stack_layer_reads_only_what_is_shown():
    reads = []

    def read(idx):
        reads.extend(np.asarray(idx).tolist())
        return np.zeros((len(idx), 8, 8), dtype=np.float32) + np.asarray(idx, dtype=np.float32)[:, None, None]

    data, kw, _ = _layers.stack_layer(read, 100_000, 8, 1.0, "big")
    assert len(reads) <= 64  # contrast limits from the first images only
    reads.clear()
    assert float(np.asarray(data[70_001])[0, 0]) == 70_001.0
    assert len(reads) <= _layers.STACK_CHUNK and 70_001 in reads


def test_star_and_cs_readers_show_stored_contrast_and_summary(homogeneous_32, tmp_path):
    star = homogeneous_32 / "particles.star"
    ps = load_particles(star, invert=False)
    write_particles(tmp_path / "particles.cs", ps)
    stored = mrcfile.read(homogeneous_32 / "particles.mrcs")
    for path, fmt in ((star, "relion3.1"), (tmp_path / "particles.cs", "cryosparc")):
        ((data, kw, kind),) = read_one(get_particles_reader, path)
        assert kind == "image" and data.shape == (2000, 32, 32)
        np.testing.assert_array_equal(np.asarray(data[[0, 1999]]), stored[[0, 1999]])  # not inverted
        meta = kw["metadata"]
        assert meta["n"] == 2000 and meta["box"] == 32 and meta["apix"] == pytest.approx(12.0)
        assert meta["optics_groups"] == {1: 2000} and meta["format"] == fmt
        assert kw["scale"] == pytest.approx((1.0, 12.0, 12.0))


def test_readers_decline_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert get_map_reader(str(tmp_path / "notes.txt")) is None
    assert get_stack_reader(str(tmp_path / "a.mrc")) is None
    assert get_particles_reader(str(tmp_path / "a.mrcs")) is None
    assert get_map_reader([str(tmp_path / "a.mrc"), str(tmp_path / "b.mrc")]) is None  # no stacking of maps
    (tmp_path / "config.json").write_text(json.dumps({"format_version": 1}))
    assert get_run_reader(str(tmp_path)) is None  # a folder: runs open through their config.json
    assert get_run_reader(str(tmp_path / "notes.txt")) is None


def make_run(root, D=16, apix=2.0):
    """A run folder with a consensus map holding one blob and a Gaussian at the blob's centre."""
    RunFolder(root).update_config(consensus={"epochs": 1})
    stage = root / "consensus"
    stage.mkdir()
    at = (4, 10, 7)  # (z, y, x) voxel
    write_map(stage / "map.mrc", blob_map(D, at), apix)
    centre_xyz = (np.array(at[::-1]) - D // 2) * apix
    np.savez(stage / "gaussians.npz", centres=np.array([centre_xyz, [0, 0, 0]], dtype=np.float32),
             widths=np.array([1.5, 3.0], dtype=np.float32), amplitudes=np.array([2.0, 1.0], dtype=np.float32),
             box=np.int64(D), apix=np.float64(apix))
    return at


def test_run_reader_points_sit_on_the_density(tmp_path):
    run = tmp_path / "run"
    at = make_run(run)
    layers = read_one(get_run_reader, run / "config.json")
    by_name = {kw["name"]: (data, kw, kind) for data, kw, kind in layers}
    assert set(by_name) == {"consensus map", "consensus gaussians"}
    img = Layer.create(*by_name["consensus map"])
    pts = Layer.create(*by_name["consensus gaussians"])
    assert pts._type_string == "points" and pts.data.shape == (2, 3) and not pts.visible
    np.testing.assert_allclose(pts.data_to_world(pts.data[0]), img.data_to_world(at))
    # On the map's lattice (sliders step one voxel), each disc 2 x width across in Å.
    assert tuple(pts.scale) == tuple(img.scale) == (2.0,) * 3 and tuple(pts.translate) == tuple(img.translate)
    np.testing.assert_allclose(pts.size * pts.scale[0], [3.0, 6.0])
    np.testing.assert_allclose(pts.features["amplitude"], [2.0, 1.0])


def test_run_reader_errors_name_the_problem(tmp_path, notes):
    run = tmp_path / "run"
    RunFolder(run).update_config(consensus={"epochs": 1})
    with pytest.raises(InputError, match="finished stage"):
        _layers.run_layers(run)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(InputError, match="format_version"):
        _layers.run_layers(run)
    (run / "config.json").write_text("{not json")
    # The reader function reports it (a notification) and returns npe2's "no layers" value.
    assert read_one(get_run_reader, run / "config.json") == [(None,)]
    assert [n.message.split(": ")[:2] for n in notes] == [[str(run / "config.json"), "config"]]


def test_viewer_opens_run_and_reports_broken_files(make_napari_viewer, tmp_path, notes):
    viewer = make_napari_viewer()
    run = tmp_path / "run"
    make_run(run)
    layers = viewer.open(run / "config.json", plugin=PLUGIN)
    assert [layer.name for layer in layers] == ["consensus gaussians", "consensus map"]
    assert layers[1].rendering == "iso" and layers[1].data.dtype == np.float32

    bad = tmp_path / "broken.star"
    bad.write_text("data_particles\nloop_\n_rlnImageName #1\n1@missing.mrcs\n")
    with pytest.raises(InputError) as direct:
        load_particles(bad, invert=False)
    # With plugin=None (as File > Open and drag-and-drop call it) the reader reports the error
    # itself, in our words, and opens nothing (tests/napari/test_errors.py: every kind of file).
    notes.clear()
    assert viewer.open(bad, plugin=None) == []
    assert [n.message for n in notes] == [str(direct.value)]
    assert len(viewer.layers) == 2


def test_stack_slider_is_named_image(make_napari_viewer, tmp_path):
    """The stack's first axis is labelled "image" (napari's default label "-3" beside the slider
    read as a stack starting at image -3) and its slider runs over the image indices."""
    images = np.random.default_rng(3).normal(size=(20, 8, 8)).astype(np.float32)
    write_stack(tmp_path / "parts.mrcs", images, apix=2.0)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(tmp_path / "parts.mrcs", plugin=PLUGIN)
    assert layer.axis_labels == ("image", "y", "x")
    assert viewer.dims.axis_labels[0] == "image"
    assert viewer.dims.range[0].start == 0 and viewer.dims.range[0].stop == 19
    assert 0 <= viewer.dims.current_step[0] <= 19
