"""Latent explorer dock on a trained two-state hinge run: a drag across the scatter renders maps
that match the ground truth of the state under the cursor (and not the other state); a lasso
selection written as .star / .cs re-reads to exactly the selected rows with every column; a
traversal exports a ChimeraX-ready MRC series (with its .cxc script), and an mp4 or GIF movie
recorded in the background (cancellable, nothing written then)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import starfile
import torch

from cryospire_core.analysis.latentspace import nearest_particles
from cryospire_core.analysis.metrics import load_ground_truth
from cryospire_core.imaging.fsc import auc, fsc
from cryospire_core.io.load import load_particles
from cryospire_core.io.mrc import read_map
from cryospire_core.io.selection import read_selection
from cryospire_core.pipeline.runfolder import RunFolder
from cryospire_core.pipeline.train import train
from cryospire_core.sim.phantoms import make_phantom
from cryospire_core.sim.simulate import simulate, write_simulation
from cryospire_napari._explorer_widget import LABELS_NAME, MAP_NAME, ExplorerWidget
from tests.conftest import tiny_config

#: FSC AUC (metrics.auc, masked as `cryospire evaluate` does) a dragged map must reach against
#: the ground truth of the state under the cursor. Measured on this fixture: 0.43-0.44 for the
#: right state, 0.33 for the other end of the hinge, so a wrong map fails.
FSC_AUC_MIN = 0.40


@pytest.fixture(scope="module")
def hinge_run(tmp_path_factory):
    """A fully trained tiny run (all stages) on the hinge's two extreme states: 32 px, 1,000
    images, SNR 10, 8 epochs per latent stage (~20 s)."""
    torch.set_num_threads(1)
    box = 32
    ph = make_phantom("hinge", box, 384.0 / box)
    two = dataclasses.replace(ph, centres=ph.centres[[0, -1]], presence=ph.presence[[0, -1]],
                              populations=np.array([0.5, 0.5]), state_names=("open", "closed"))
    root = tmp_path_factory.mktemp("hinge_run")
    write_simulation(root / "data", simulate("hinge", box, 1000, snr=10.0, seed=1, phantom=two))
    star = root / "data" / "particles.star"
    cfg = tiny_config()
    cfg.discovery = dataclasses.replace(cfg.discovery, epochs=8)
    cfg.hierarchical = dataclasses.replace(cfg.hierarchical, epochs=8)
    ps = load_particles(star)
    run = RunFolder(root / "run")
    run.update_config(train=cfg, n_particles=len(ps), train_command={"particles": str(star)})
    assert train(ps, run, cfg, torch.device("cpu")) == "finished"
    return run.root


def loaded(make_napari_viewer, qtbot, run, show: bool = False) -> ExplorerWidget:
    viewer = make_napari_viewer(show=show)
    widget = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.load_run(run)
    qtbot.waitUntil(lambda: widget.session.explorer is not None and not widget.busy and MAP_NAME in viewer.layers,
                    timeout=30_000)
    return widget


def test_drag_across_the_scatter_renders_the_state_under_the_cursor(make_napari_viewer, qtbot, hinge_run):
    widget = loaded(make_napari_viewer, qtbot, hinge_run)
    e = widget.session.explorer
    gt = load_ground_truth(e.gt_dir)
    assert e.gt_labels is not None and len(gt) == 2
    emb = widget.session.embedding
    # Canvas positions of the two states' centres in the scatter, and a drag between them.
    ends = [widget.scatter.to_canvas(emb.points[e.gt_labels == s].mean(0)) for s in (0, 1)]
    path = [ends[0] + t * (ends[1] - ends[0]) for t in np.linspace(0, 1, 25)]

    def check_map_at_cursor():
        z = emb.to_latent(widget.session.cursor.xy)[0]
        state = int(e.gt_labels[nearest_particles(e.latents, z, 1)[0]])
        vol = widget.viewer.layers[MAP_NAME].data
        scores = [auc(*fsc(vol, gt[k], gt.mask)) for k in range(2)]
        print(f"map at the cursor: nearest state {state}, FSC AUC vs state 0 {scores[0]:.4f}, vs state 1 {scores[1]:.4f}")
        assert scores[state] >= FSC_AUC_MIN, scores
        assert scores[1 - state] < FSC_AUC_MIN, scores  # the other end of the hinge fails the bar
        return state

    shown = widget.frames_shown
    widget.drag(path[::-1] + path)  # from state 1 to state 0, back to state 1
    requested = widget.frames_requested
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    # latest wins: not every drag position was rendered, and the last one was
    assert widget.frames_shown - shown < len(path) * 2
    np.testing.assert_allclose(widget.last_frame.z, emb.to_latent(widget.session.cursor.xy)[0], atol=1e-6)
    assert check_map_at_cursor() == 1
    assert requested >= 2 * len(path) - 1
    widget.drag(path[::-1])  # ... and back to state 0
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    assert check_map_at_cursor() == 0
    # the readout table lists every part
    assert widget.readout.rowCount() == e.n_parts


def test_lasso_selection_written_as_star_and_cs_rereads_exactly(make_napari_viewer, qtbot, hinge_run, tmp_path,
                                                                notes):
    widget = loaded(make_napari_viewer, qtbot, hinge_run)
    e = widget.session.explorer
    pts = widget.session.embedding.points
    lo, hi = pts.min(0), pts.max(0)
    mid = (lo + hi) / 2
    polygon = [lo - 1, [mid[0], lo[1] - 1], [mid[0], hi[1] + 1], [lo[0] - 1, hi[1] + 1]]  # left half
    widget.mode.setCurrentText("lasso")
    widget.drag([widget.scatter.to_canvas(p) for p in polygon])
    expected = np.flatnonzero(pts[:, 0] < mid[0])
    got = np.flatnonzero(widget.session.selected)
    # the lasso is drawn in canvas pixels: points within a pixel of the edge may go either way
    assert len(np.setxor1d(got, expected)) <= 3 and len(got) > 100
    star, index = widget.actions.write_selection(tmp_path / "keep.star")
    full, sub = starfile.read(e.particles), starfile.read(star)
    assert list(sub["particles"].columns) == list(full["particles"].columns)
    for col in full["particles"].columns:
        if col != "rlnImageName":
            np.testing.assert_array_equal(sub["particles"][col].to_numpy(), full["particles"][col].to_numpy()[got])
    ps = load_particles(e.particles)
    assert read_selection(star, ps).tolist() == got.tolist()
    assert np.loadtxt(index, dtype=int).tolist() == got.tolist()
    assert widget.actions.write_selection(tmp_path / "keep.cs") is None  # keep_indices.txt is keep.star's: refused
    assert any("keep_indices.txt: selection file: expected a file name not in use" in str(n.message) for n in notes)
    assert not (tmp_path / "keep.cs").exists()
    cs, _ = widget.actions.write_selection(tmp_path / "keep.cs", overwrite=True)
    assert read_selection(cs, ps).tolist() == got.tolist()
    # a k-means state selection
    widget.session.select_state(0)
    assert widget.session.selected.sum() == (e.states(widget.k_states.value()) == 0).sum()


def with_pc1_traversal(widget: ExplorerWidget, qtbot, steps: int = 5) -> None:
    """Show part labels and compute a PC1 traversal of ``steps`` steps in ``widget``."""
    widget.show_labels.setChecked(True)
    widget.trav_steps.setValue(steps)
    widget.trav_kind.setCurrentText("PC1")
    widget.compute_traversal()
    qtbot.waitUntil(lambda: widget.session.traversal is not None and not widget.busy, timeout=30_000)


def test_traversal_plays_and_exports_series_and_movie(make_napari_viewer, qtbot, hinge_run, tmp_path, notes):
    widget = loaded(make_napari_viewer, qtbot, hinge_run, show=True)  # a hidden canvas screenshots black
    with_pc1_traversal(widget, qtbot)
    trav = widget.session.traversal
    assert trav.latents.shape == (5, widget.session.explorer.zdim) and len(trav.readouts) == 5
    assert LABELS_NAME in widget.viewer.layers
    shown = widget.frames_shown
    widget.play_button.setChecked(True)
    qtbot.waitUntil(lambda: widget.frames_shown >= shown + 4, timeout=30_000)
    widget.play_button.setChecked(False)
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    widget.actions.export_series(tmp_path / "series")
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    m = read_map(tmp_path / "series" / "vol_004.mrc")
    assert m.data.shape == (32, 32, 32) and m.apix == pytest.approx(12.0)
    np.testing.assert_allclose(m.origin, [0.0] * 3)  # as every map cryospire writes (RELION's convention)
    (tmp_path / "series" / "vol_002.mrc").write_text("the user's own")
    widget.actions.export_series(tmp_path / "series")  # refused at once (a notification), before any map is computed
    assert not widget.busy and (tmp_path / "series" / "vol_002.mrc").read_text() == "the user's own"
    assert any("vol_000.mrc: map series: expected a file name not in use (or choose a new or empty folder)"
               in str(n.message) for n in notes)
    assert "open_in_chimerax.cxc" in widget.status.text() and (tmp_path / "series" / "open_in_chimerax.cxc").is_file()


def test_movies_are_recorded_in_the_background_and_can_be_cancelled(make_napari_viewer, qtbot, hinge_run, tmp_path,
                                                                     notes):
    import imageio.v3 as iio
    import imageio_ffmpeg

    widget = loaded(make_napari_viewer, qtbot, hinge_run, show=True)  # a hidden canvas screenshots black
    with_pc1_traversal(widget, qtbot)
    # The GIF: export_movie returns at once; the dock counts the frames, then the file appears.
    cursor = widget.session.cursor
    assert widget.actions.export_movie(tmp_path / "trav.gif") is None
    assert widget.busy and not (tmp_path / "trav.gif").exists()
    assert widget.export_movie_button.text() == "Cancel movie" and widget.status.text() == "movie: frame 1 of 5..."
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    frames = iio.imread(tmp_path / "trav.gif", index=None)
    assert len(frames) == 5 and np.abs(frames[-1].astype(int) - frames[0]).max() > 0
    assert widget.status.text().startswith(f"wrote {tmp_path / 'trav.gif'} (5 frames)")
    assert widget.export_movie_button.text() == "Export movie (mp4, GIF)..."
    # The cursor stayed, and the viewer shows its map again.
    assert widget.session.cursor is cursor and np.array_equal(widget.last_frame.z, cursor.z)
    # The mp4 (H.264): as many frames, and they differ.
    widget.actions.export_movie(tmp_path / "trav.mp4")
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "trav.mp4"))
    w, h = next(reader)["size"]
    mp4 = np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]).astype(int)
    assert len(mp4) == 5 and np.abs(mp4[-1] - mp4[0]).max() > 50
    # Cancelled by the button, or by Play: nothing written, the dock is usable again.
    for cancel in (widget.export_movie_button.click, lambda: widget.play_button.setChecked(True)):
        widget.actions.export_movie(tmp_path / "cancelled.mp4")
        qtbot.waitUntil(lambda: widget.actions.movie is None or len(widget.actions.movie.frames) >= 1, timeout=30_000)
        assert widget.actions.movie is not None  # still recording
        cancel()
        assert widget.actions.movie is None and "movie cancelled after" in widget.status.text()
        widget.play_button.setChecked(False)
        qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
        assert not (tmp_path / "cancelled.mp4").exists() and list(tmp_path.glob(".cryospire-tmp*")) == []
    # A file name that is neither mp4 nor GIF is refused before anything is recorded.
    widget.actions.export_movie(tmp_path / "trav.avi")
    assert not widget.busy and any("trav.avi: movie: expected a file name ending in .mp4 or .gif" in str(n.message)
                                   for n in notes)
    # Closing the dock ends a recording too, writing nothing.
    widget.actions.export_movie(tmp_path / "closed.mp4")
    qtbot.waitUntil(lambda: widget.actions.movie is None or len(widget.actions.movie.frames) >= 1, timeout=30_000)
    widget.close()
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    qtbot.wait(500)
    assert not (tmp_path / "closed.mp4").exists()


def test_continue_training_between_the_stages_trains_stage_2_on_the_selection(make_napari_viewer, qtbot, parts_run,
                                                                               tiny_star, tmp_path):
    import shutil

    run = shutil.copytree(parts_run, tmp_path / "run")
    RunFolder(run).update_config(train_command={"particles": str(tiny_star)})
    widget = loaded(make_napari_viewer, qtbot, run)
    e = widget.session.explorer
    assert e.stage == "discovery" and widget.readout.rowCount() == e.n_parts
    widget.session.select_state(0)
    rows = np.flatnonzero(widget.session.selected)
    assert widget.actions.continue_training() == run
    qtbot.waitUntil(lambda: widget.actions.train_job is None, timeout=60_000)
    assert (run / "hierarchical" / "model.pt").is_file()
    assert np.load(run / "selection.npy").tolist() == rows.tolist()
    qtbot.waitUntil(lambda: not widget.busy and widget.session.explorer.stage == "hierarchical", timeout=30_000)
    assert widget.session.explorer.n_particles == len(rows)  # the reloaded run explores the kept particles
