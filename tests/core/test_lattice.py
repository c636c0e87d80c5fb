"""The Lattice owns the grid (coordinates, centre, Fourier crop, MRC header, napari placement),
and every map cryospire writes carries the same header, so they all overlay in ChimeraX."""

from __future__ import annotations

import math
import sys

import mrcfile
import numpy as np
import pytest
import torch

from cryospire_core.analysis.explorer import Explorer
from cryospire_core.cli.main import main
from cryospire_core.imaging.fourier import (
    fft2_centered,
    fourier_crop_2d,
    ifft2_centered,
)
from cryospire_core.imaging.lattice import MRC_ORIGIN, Lattice
from cryospire_core.io.load import load_particles
from cryospire_core.io.mixture import mixture_lattice
from cryospire_core.io.mrc import MapData, read_header, read_map, write_map
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.services.traverse import write_map_series
from cryospire_napari._layers import map_layer, read_map_layer
from cryospire_napari._writer import write_image, write_labels

# -- the lattice itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("box, apix", [(1, 1.0), (0, 1.0), (32.0, 1.0), (True, 1.0), ("32", 1.0),
                                       (32, 0.0), (32, -1.0), (32, math.nan), (32, math.inf), (32, "x")])
def test_lattice_refuses_impossible_grids(box, apix):
    with pytest.raises(ValueError, match="Lattice"):
        Lattice(box, apix)


def test_lattice_is_a_value():
    lat = Lattice(np.int64(32), np.float32(1.5))
    assert type(lat.box) is int and type(lat.apix) is float
    assert lat == Lattice(32, 1.5) and hash(lat) == hash(Lattice(32, 1.5))
    with pytest.raises(AttributeError):
        lat.box = 64


@pytest.mark.parametrize("box", [8, 9])
def test_axis_centre_and_index_position(box):
    lat = Lattice(box, 2.5)
    assert lat.centre == box // 2 and lat.shape == (box, box, box)
    axis = lat.axis()
    assert axis.shape == (box,) and axis[lat.centre] == 0.0
    np.testing.assert_allclose(np.diff(axis), 2.5)
    assert axis[0] == -(box // 2) * 2.5  # even boxes hold one more sample below 0 than above
    t = lat.axis_torch("cpu", torch.float64)
    assert t.dtype == torch.float64 and torch.equal(t, torch.as_tensor(axis))
    assert lat.axis_torch().dtype == torch.float32
    # index and position are inverse maps between Å and (fractional) array indices, numpy or torch.
    xyz = np.array([[0.0, 2.5, -5.0], [1.25, -7.5, 10.0]])
    np.testing.assert_allclose(lat.index(xyz), xyz / 2.5 + box // 2)
    np.testing.assert_allclose(lat.position(lat.index(xyz)), xyz)
    assert torch.equal(lat.index(torch.zeros(3)), torch.full((3,), float(box // 2)))
    np.testing.assert_array_equal(lat.position(np.arange(box)), axis)


def test_pixels_lattice_counts_in_pixels():
    assert Lattice.pixels(6) == Lattice(6, 1.0)
    np.testing.assert_array_equal(Lattice.pixels(6).axis(), [-3, -2, -1, 0, 1, 2])


def test_cropped_keeps_the_field_of_view_and_centred_slice_the_centre():
    lat = Lattice(64, 3.0)
    assert lat.cropped(32) == Lattice(32, 6.0)
    assert lat.cropped(128) == Lattice(128, 1.5)
    assert lat.cropped(48).box * lat.cropped(48).apix == pytest.approx(64 * 3.0)
    assert Lattice.pixels(8).centred_slice(4) == slice(2, 6)
    for big, small in ((8, 4), (9, 4), (9, 5), (8, 8)):
        s = Lattice.pixels(big).centred_slice(small)
        assert Lattice.pixels(big).axis()[s][small // 2] == 0.0  # the centres coincide
    with pytest.raises(ValueError):
        Lattice.pixels(8).centred_slice(9)


def test_fourier_crop_samples_the_cropped_lattice():
    # A smooth blob sampled on the fine lattice, Fourier-cropped, is the same blob sampled on
    # lattice.cropped(box): same extent, coarser pixels, the centre still at 0 Å.
    fine = Lattice(64, 1.0)
    coarse = fine.cropped(32)

    def blob(lat):
        y, x = np.meshgrid(lat.axis(), lat.axis(), indexing="ij")
        return np.exp(-((x - 5.0) ** 2 + (y + 3.0) ** 2) / (2 * 4.0**2))  # 2 coarse pixels wide

    spectrum = fft2_centered(torch.as_tensor(blob(fine)))
    cropped = ifft2_centered(fourier_crop_2d(spectrum, coarse.box)).numpy() * (coarse.box / fine.box) ** 2
    np.testing.assert_allclose(cropped, blob(coarse), atol=1e-6)


def test_header_fields_round_trip_through_an_mrc_file(tmp_path):
    lat = Lattice(16, 2.25)
    assert lat.mrc_voxel_size == 2.25 and lat.mrc_origin == MRC_ORIGIN == (0.0, 0.0, 0.0)
    vol = np.random.default_rng(0).random(lat.shape).astype(np.float32)
    write_map(tmp_path / "m.mrc", vol, lat.mrc_voxel_size)
    with mrcfile.open(tmp_path / "m.mrc") as m:  # an independent reader
        assert tuple(m.header.origin.item()) == lat.mrc_origin
        np.testing.assert_allclose(m.voxel_size.item(), (2.25,) * 3)
    assert read_map(tmp_path / "m.mrc").lattice == lat
    with pytest.raises(ValueError, match="D x D x D"):
        _ = MapData(np.zeros((4, 4, 6), np.float32), 1.0, np.zeros(3)).lattice


def test_napari_placement_puts_the_box_centre_at_zero():
    lat = Lattice(10, 1.5)
    assert lat.napari_scale() == (1.5, 1.5, 1.5) and lat.napari_scale(2) == (1.5, 1.5)
    scale, translate = np.array(lat.napari_scale()), np.array(lat.napari_translate())
    idx = np.array([[0, 0, 0], [5, 5, 5], [2, 7, 9]])
    world = idx * scale + translate  # napari's data -> world transform
    np.testing.assert_allclose(world, lat.position(idx))
    np.testing.assert_array_equal(world[1], 0.0)
    assert lat.napari_translate(2) == (-7.5, -7.5)


# -- every writer, one header ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def written_maps(tmp_path_factory):
    """{writer: map path} from every place cryospire writes maps, on one 32 px hinge simulation,
    and the data's lattice."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lattice")
    sim, run = root / "sim", root / "run"
    assert main(["simulate", "--preset", "hinge", "--box", "32", "--n", "200", "--snr", "10", "--seed", "1",
                 "--out", str(sim)]) == 0
    star = str(sim / "particles.star")
    assert main(["backproject", star, "--out", str(root / "bp.mrc")]) == 0
    assert main(["train", star, "--out", str(run), "--epochs-consensus", "1", "--epochs-1", "1", "--epochs-2", "1",
                 "--gaussians-1", "64", "--gaussians-2", "128", "--quiet"]) == 0
    np.savetxt(root / "idx.txt", [0, 1], fmt="%d")
    assert main(["render", str(run), "--particles", str(root / "idx.txt"), "--out", str(root / "render")]) == 0
    with pytest.MonkeyPatch.context() as mp:  # as without umap-learn: its first fit compiles for a minute
        mp.setitem(sys.modules, "umap", None)
        assert main(["analyze", str(run), "--ksample", "2", "--pc-steps", "2", "--out", str(root / "analysis")]) == 0
    lattice = read_map(sim / "gt" / "vol_000.mrc").lattice
    consensus = read_map(run / "consensus" / "map.mrc").data
    (series,) = write_map_series(root / "series", [consensus], lattice.apix)
    data, kwargs, _ = map_layer(consensus, lattice.apix, "explorer map")
    (layer_file,) = write_image(str(root / "layer.mrc"), data, kwargs)
    data, kwargs, _ = read_map_layer(run / "consensus" / "map.mrc")  # opened, then saved again
    (resaved,) = write_image(str(root / "resaved.mrc"), data, kwargs)
    (labels,) = write_labels(str(root / "labels.mrc"), (consensus > consensus.mean()).astype(np.int32),
                             {"scale": lattice.napari_scale(), "metadata": {}})
    maps = {
        "simulate gt": sim / "gt" / "vol_000.mrc",
        "simulate mask": sim / "gt" / "mask.mrc",
        "backproject": root / "bp.mrc",
        "train consensus": run / "consensus" / "map.mrc",
        "train backprojection": run / "consensus" / "backprojection.mrc",
        "train discovery": run / "discovery" / "map.mrc",
        "render": root / "render" / "vol_000.mrc",
        "explorer series": series,
        "napari image": layer_file,
        "napari re-saved": resaved,
        "napari labels": labels,
    }
    analysis = sorted((root / "analysis").rglob("*.mrc"))
    assert any("mask" in p.name for p in analysis) and len(analysis) >= 5  # states, PC1, part labels, masks
    maps.update({f"analyze {p.relative_to(root / 'analysis')}": p for p in analysis})
    return maps, lattice, sim


def test_maps_from_every_writer_share_one_header(written_maps):
    maps, lattice, _ = written_maps
    assert lattice == Lattice(32, 12.0)  # the simulator's 384 Å field of view
    for name, path in maps.items():
        h = read_header(path)
        assert h.shape == lattice.shape, name
        np.testing.assert_allclose(h.voxel_size, (lattice.mrc_voxel_size,) * 3, rtol=1e-6, err_msg=name)
        np.testing.assert_array_equal(h.origin, lattice.mrc_origin, err_msg=name)


def test_the_same_density_sits_at_the_same_chimerax_position(written_maps):
    # Headers alike are not enough if a writer moved its data. Placed as ChimeraX places them
    # (origin + index x voxel size), the maps' centres of mass sit where the ground truth's do
    # (mean over its states): the backprojection within a voxel, the briefly trained maps within
    # two. A map placed by another convention would be off by half the box, 192 Å.
    maps, lattice, sim = written_maps

    def centre_of_mass(path):
        m, h = read_map(path), read_header(path)
        d = np.clip(m.data, 0, None)
        zyx = np.array([np.sum(d * g) / d.sum() for g in np.indices(d.shape)])
        return h.origin + zyx[::-1] * np.array(h.voxel_size)  # (x, y, z) Å in ChimeraX

    truth = np.mean([centre_of_mass(p) for p in sorted((sim / "gt").glob("vol_*.mrc"))], axis=0)
    for name, voxels in (("backproject", 1), ("train consensus", 2), ("render", 2), ("explorer series", 2)):
        np.testing.assert_allclose(centre_of_mass(maps[name]), truth, atol=voxels * lattice.apix, err_msg=name)


def test_the_particles_every_model_and_the_explorer_hold_the_data_lattice(written_maps):
    # One Lattice travels from the particles through every stage's model (rebuilt from the run's
    # saved box and apix arrays) to the explorer; each renders its maps on it.
    _, lattice, sim = written_maps
    run = RunFolder(sim.parent / "run")
    assert load_particles(sim / "particles.star").lattice == lattice
    assert mixture_lattice(run.gaussians("consensus")) == lattice
    consensus = run.latest_checkpoint_model("consensus")
    assert consensus.lattice == lattice
    with torch.no_grad():
        assert consensus.volume().shape == lattice.shape
        for stage in ("discovery", "hierarchical"):
            model = run.model(stage)
            assert model.lattice == lattice, stage
            assert model.volume(torch.zeros(model.cfg.zdim)).shape == lattice.shape, stage
    explorer = Explorer.from_run(run.root)
    assert explorer.lattice == lattice
    assert explorer.map_at(explorer.latents[0]).shape == lattice.shape
