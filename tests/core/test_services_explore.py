"""The explorer's services (what the dock and the commands `traverse`, `select`, `branch` share):
map series of traversals, selections written as .star/.cs subsets, and stage 2 on a selection
(in place before stage 2, or a branched run folder), on a tiny trained run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cryospire_core.analysis import explorer as ex
from cryospire_core.analysis.latentspace import kmeans_states
from cryospire_core.errors import InputError
from cryospire_core.io.load import load_particles
from cryospire_core.io.mrc import read_map
from cryospire_core.io.selection import read_selection
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.services import branch, select, traverse


@pytest.fixture(scope="module")
def explorer(tiny_run):
    return ex.Explorer.from_run(tiny_run)


def _subset_explorer(e: ex.Explorer, keep: np.ndarray) -> ex.Explorer:
    """``e`` as a stage-2 run trained on the particles ``keep`` would load: their latents, and
    ``selection`` mapping rows to particles."""
    return ex.Explorer(e.model, e.latents[keep], e.part_index, e.root, e.particles, keep)


# -- traversals ---------------------------------------------------------------------------------


def test_map_series_headers_are_chimerax_ready(tmp_path):
    vols = [np.random.default_rng(i).random((16, 16, 16)).astype(np.float32) for i in range(3)]
    r = ex.PartReadout(np.array([1.0, 2.0]), np.zeros((2, 3)), np.array([1.0, 0.5]))
    paths = traverse.write_map_series(tmp_path / "tr", vols, 2.5, latents=np.zeros((3, 4)), readouts=[r, r, r])
    assert [p.name for p in paths] == ["vol_000.mrc", "vol_001.mrc", "vol_002.mrc"]
    for p, v in zip(paths, vols):
        m = read_map(p)
        np.testing.assert_array_equal(m.data, v)
        assert m.apix == pytest.approx(2.5)
        np.testing.assert_array_equal(m.origin, [0.0, 0.0, 0.0])  # like every map cryospire writes
    assert "vseries true" in (tmp_path / "tr" / "README.txt").read_text()
    assert "open_in_chimerax.cxc" in (tmp_path / "tr" / "README.txt").read_text()
    assert len((tmp_path / "tr" / "parts.csv").read_text().splitlines()) == 1 + 3 * 2


def test_movie_frames_are_written_as_a_looping_gif(tmp_path):
    import imageio.v3 as iio

    frames = [np.full((8, 10, 4), 40 * i, np.uint8) for i in range(3)]  # RGBA screenshots
    gif = traverse.write_movie(tmp_path / "t.gif", frames, fps=5)
    back = iio.imread(gif, index=None)
    assert back.shape[:3] == (3, 8, 10)
    np.testing.assert_array_equal(back[:, 0, 0, 0], [0, 40, 80])
    with pytest.raises(InputError, match="t.avi: movie: expected a file name ending in .mp4 or .gif, found .avi"):
        traverse.write_movie(tmp_path / "t.avi", frames)
    assert list(tmp_path.iterdir()) == [gif]  # nothing left of the refused one


def test_movie_frames_are_written_as_an_h264_mp4_padded_to_even_sizes(tmp_path):
    import imageio_ffmpeg

    # Odd sizes, and one frame larger (the window resized while recording): padded with black.
    frames = [np.full((31, 41, 4), 40 * i, np.uint8) for i in range(5)] + [np.full((33, 41, 4), 200, np.uint8)]
    mp4 = traverse.write_movie(tmp_path / "t.mp4", frames, fps=5)
    reader = imageio_ffmpeg.read_frames(str(mp4))
    meta = next(reader)
    assert meta["size"] == (42, 34) and meta["fps"] == pytest.approx(5) and "h264" in meta["codec"]
    back = np.stack([np.frombuffer(f, np.uint8).reshape(34, 42, 3) for f in reader])
    assert len(back) == 6
    # Each frame's grey comes back within the codec's loss, and the frames differ.
    np.testing.assert_allclose(back[:5, 10, 10].mean(1), [0, 40, 80, 120, 160], atol=6)
    assert back[5, 32, 10].mean() > 190 and back[0, 32, 10].mean() < 6  # padded rows are black
    assert list(tmp_path.iterdir()) == [mp4]  # written through a temporary, renamed at the end


def test_pc_traversal_exports_the_maps_at_its_latents(explorer, tmp_path, monkeypatch):
    trav = explorer.traversal(ex.TraversalKind.PC1, 4)
    zs, readouts = trav.latents, trav.readouts
    assert zs.shape == (4, explorer.zdim) and len(readouts) == 4 and explorer.n_parts > 0
    s = explorer.pca.transform(zs)
    assert np.all(np.diff(s[:, 0]) > 0)  # along PC1, other PCs at the mean
    np.testing.assert_allclose(s[:, 1:], 0, atol=1e-4)
    paths = traverse.export_traversal(explorer, trav, tmp_path / "pc1")
    assert len(paths) == 4
    for path, z in zip(paths, zs):
        np.testing.assert_array_equal(read_map(path).data, explorer.map_at(z))
    np.testing.assert_array_equal(np.load(tmp_path / "pc1" / "latents.npy"), zs)
    rows = (tmp_path / "pc1" / "parts.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * explorer.n_parts
    step, part, angle = rows[1 + explorer.n_parts].split(",")[:3]  # step 1, part 1
    assert (step, part) == ("1", "1") and float(angle) == pytest.approx(readouts[1].angle_deg[0], abs=1e-4)
    # An existing file is refused before any map is computed.
    computed = []
    monkeypatch.setattr(explorer, "map_at", lambda z: computed.append(z))
    with pytest.raises(InputError, match="vol_000.mrc: map series: expected a file name not in use"):
        traverse.export_traversal(explorer, trav, tmp_path / "pc1")
    assert computed == []


def test_traversals_between_particles_and_states_start_and_end_there(explorer):
    z0, z1 = traverse.particle_latent(explorer, 3), traverse.particle_latent(explorer, 250)
    np.testing.assert_array_equal([z0, z1], explorer.latents[[3, 250]])
    for kind in (ex.TraversalKind.LINE, ex.TraversalKind.GRAPH):
        trav = explorer.traversal(kind, 6, z0, z1)
        assert trav.latents.shape == (6, explorer.zdim) and len(trav.readouts) == 6
        np.testing.assert_allclose(trav.latents[[0, -1]], [z0, z1], atol=1e-5)
    with pytest.raises(InputError, match="--from: expected a particle index in 0..299, found 300"):
        traverse.particle_latent(explorer, 300, "--from")
    # State centres: the k-means of `analyze` (same seed), and every particle's state is that of
    # its nearest centre.
    centres = traverse.state_centres(explorer, 4)
    np.testing.assert_allclose(centres, kmeans_states(explorer.latents, 4, 0)[1], rtol=1e-6)
    nearest = np.argmin(((explorer.latents[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest, explorer.states(4))
    with pytest.raises(InputError, match="--k: expected 1 to 300 states"):
        traverse.state_centres(explorer, 301, field="--k")


def test_particles_of_a_stage_2_selection_are_found_by_their_file_index(explorer):
    keep = np.arange(0, 300, 3)
    sub = _subset_explorer(explorer, keep)
    np.testing.assert_array_equal(traverse.particle_latent(sub, 6), explorer.latents[6])  # row 2
    with pytest.raises(InputError, match="particle 7, which it did not keep"):
        traverse.particle_latent(sub, 7)
    mask = np.zeros(len(keep), bool)
    mask[[0, 5]] = True
    rows = sub.particle_indices(mask)
    assert rows.tolist() == [0, 15]
    np.testing.assert_array_equal([traverse.particle_latent(sub, i) for i in rows], sub.latents[[0, 5]])


# -- selections ----------------------------------------------------------------------------------


def test_selection_export_keeps_every_column(tmp_path):
    import starfile

    from cryospire_core.sim.simulate import simulate, write_simulation

    star = write_simulation(tmp_path / "d", simulate("hinge", 16, 40, snr=1.0, seed=0)) / "particles.star"
    rows = np.array([3, 5, 11, 30])
    out, index = select.write_selection(tmp_path / "sel" / "keep.star", rows, star)
    full, sub = starfile.read(star), starfile.read(out)
    assert list(sub["particles"].columns) == list(full["particles"].columns)
    for col in full["particles"].columns:
        if col != "rlnImageName":
            np.testing.assert_array_equal(sub["particles"][col].to_numpy(), full["particles"][col].to_numpy()[rows])
    assert np.loadtxt(index, dtype=int).tolist() == rows.tolist()
    assert read_selection(out, load_particles(star)).tolist() == rows.tolist()
    with pytest.raises(InputError, match="keep_indices.txt: selection file: expected a file name not in use"):
        select.write_selection(tmp_path / "sel" / "keep.cs", rows, star)  # its index file is keep.star's
    assert not (tmp_path / "sel" / "keep.cs").exists()
    cs, _ = select.write_selection(tmp_path / "sel" / "keep.cs", rows, star, overwrite=True)
    assert read_selection(cs, load_particles(star)).tolist() == rows.tolist()
    with pytest.raises(InputError, match="keep.mrcs: selection file: expected a .star or .cs file name"):
        select.write_selection(tmp_path / "keep.mrcs", rows, star)


def test_masks_by_state_and_latent_box(explorer):
    labels = explorer.states(5)
    np.testing.assert_array_equal(select.state_mask(explorer, [1, 3], 5), np.isin(labels, [1, 3]))
    with pytest.raises(InputError, match="--states: expected states in 0..4 .* found 5, 7"):
        select.state_mask(explorer, [0, 5, 7], 5, field="--states")
    z = explorer.latents
    box_lo, box_hi = np.percentile(z, 10, axis=0), np.percentile(z, 90, axis=0)
    mask = select.latent_box_mask(z, box_lo, box_hi)
    assert 0 < mask.sum() < len(z)
    np.testing.assert_array_equal(mask, np.all((z >= box_lo) & (z <= box_hi), axis=1))
    with pytest.raises(InputError, match="box: expected a lower and an upper bound for each of the 4"):
        select.latent_box_mask(z, box_lo[:2], box_hi[:2])
    with pytest.raises(InputError, match="each lower bound at most its upper bound"):
        select.latent_box_mask(z, box_hi, box_lo)


# -- stage 2 on a selection ----------------------------------------------------------------------


def _fake_run(root, stages=("consensus", "discovery", "parts", "hierarchical")):
    """A run folder with the files that mark its ``stages`` finished, plus a checkpoint."""
    for stage in stages:
        done = RunFolder(root).finished_path(stage)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_bytes(b"data")
    (root / "discovery" / "checkpoint.pt").write_bytes(b"old")
    (root / "config.json").write_text(json.dumps({"format_version": 1, "train": {"select": None}, "n_particles": 10}))
    return root


def test_branch_run_copies_stage_1_and_sets_the_selection(tmp_path):
    src = _fake_run(tmp_path / "run")
    keep = tmp_path / "keep.txt"
    keep.write_text("1\n2\n")
    dst = branch.branch_run(src, tmp_path / "sub", keep)
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "consensus", "discovery", "parts"]
    assert not (dst / "discovery" / "checkpoint.pt").exists() and (dst / "parts" / "clustering.npz").is_file()
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["train"]["select"] == str(keep.resolve()) and cfg["n_particles"] == 10
    assert cfg["branched_from"] == str(src.resolve())
    with pytest.raises(InputError, match="empty or new folder"):
        branch.branch_run(src, dst, keep)
    early = _fake_run(tmp_path / "early", stages=("consensus", "discovery"))
    with pytest.raises(InputError, match="clustering.npz: stage output: expected a run whose part discovery is finished"):
        branch.branch_run(early, tmp_path / "sub2", keep)
    assert not (tmp_path / "sub2").exists()


def test_a_selection_applies_in_place_only_before_stage_2(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    with pytest.raises(InputError, match="hierarchical: selection: expected a run whose stage 2 has not started"):
        branch.apply_selection(run, tmp_path / "keep.txt")
    shutil.rmtree(run / "hierarchical")
    (run / "selection.npy").write_bytes(b"an earlier selection's")
    rows = np.array([4, 8, 15, 16, 23, 42])
    assert branch.continue_with_selection(run, rows) == run
    assert np.loadtxt(run / "explorer_selection.txt", dtype=int).tolist() == rows.tolist()
    saved = RunFolder(run).config()
    assert saved["train"]["select"] == str((run / "explorer_selection.txt").resolve())
    assert not (run / "selection.npy").exists()  # stage 2 reads the new selection when it starts
    assert saved["train"]["hierarchical"] == RunFolder(tiny_run).config()["train"]["hierarchical"]


def test_after_stage_2_a_selection_branches_beside_the_run(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    rows = np.array([1, 2, 3, 5, 8])
    out = branch.continue_with_selection(run, rows)
    assert out == tmp_path / "run_subset5"
    index = tmp_path / "run_subset5_indices.txt"
    assert np.loadtxt(index, dtype=int).tolist() == rows.tolist()
    saved = RunFolder(out).config()
    assert saved["train"]["select"] == str(index.resolve()) and saved["branched_from"] == str(run.resolve())
    assert not (out / "hierarchical").exists() and (out / "parts" / "clustering.npz").is_file()
    assert RunFolder(run).config()["train"]["select"] is None  # the run itself is unchanged
    shutil.rmtree(out)  # the index file is still there: refused before the folder is made again
    with pytest.raises(InputError, match="run_subset5_indices.txt: selection file: expected a file name not in use"):
        branch.continue_with_selection(run, rows)
    assert not out.exists()
    star = (tiny_run.parent / "data" / "particles.star").resolve()
    assert branch.train_command(tmp_path / "run") == ["cryospire", "train", str(star), "--out", str(tmp_path / "run"),
                                                      "--resume"]
    assert branch.selection_size(run, index) == 5
    np.savetxt(tmp_path / "bad.txt", [0, 300], fmt="%d")
    with pytest.raises(InputError, match="bad.txt: selection: expected indices in 0..299"):
        branch.selection_size(run, tmp_path / "bad.txt")
