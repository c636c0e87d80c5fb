"""The explorer's core: PCA inverse, traversals, kNN paths, MRC series, selections, the display
rasteriser against the reference, and part readouts of a model with known motions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryospire_core.analysis import explorer as ex
from cryospire_core.errors import InputError
from cryospire_core.imaging.render import rasterize
from cryospire_core.imaging.render_reference import rasterize_dense
from cryospire_core.io.mrc import read_map
from cryospire_core.models.hierarchical import HierarchicalConfig, PartAwareModel


@pytest.fixture
def latents():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(500, 4)) * [3.0, 2.0, 0.5, 0.1]).astype(np.float32)


def test_pca_embedding_inverse_is_exact_on_the_pc_plane(latents):
    emb = ex.pca_embedding(latents)
    assert emb.points.shape == (500, 2)
    xy = np.array([[1.5, -0.7], [0.0, 0.0], [-4.0, 2.0]])
    z = emb.to_latent(xy)
    np.testing.assert_allclose(emb.from_latent(z), xy, atol=1e-5)
    # the PC plane through the mean: PC3 and PC4 scores are 0
    np.testing.assert_allclose(emb.fit.transform(z)[:, 2:], 0, atol=1e-5)
    np.testing.assert_allclose(emb.to_latent([0, 0])[0], latents.mean(0), atol=1e-5)


def test_knn_inverse_stays_on_the_data(latents):
    emb = ex.Embedding("umap", ex.pca_embedding(latents).points, latents, None, k=1)
    i = 17
    np.testing.assert_allclose(emb.to_latent(emb.points[i])[0], latents[i], atol=1e-6)


def test_lasso_selects_points_inside_the_polygon():
    pts = np.array([[0.5, 0.5], [2, 2], [0.1, 0.9], [-1, 0]])
    inside = ex.points_in_polygon(pts, np.array([[0, 0], [1, 0], [1, 1], [0, 1]]))
    assert inside.tolist() == [True, False, True, False]


def test_line_and_graph_traversals_start_and_end_at_the_picks(latents):
    z0, z1 = latents[3], latents[400]
    line = ex.line_traversal(z0, z1, 7)
    assert line.shape == (7, 4)
    np.testing.assert_allclose(line[[0, -1]], [z0, z1], atol=1e-6)
    path = ex.graph_traversal(latents, z0, z1, 12, k=8)
    assert path.shape == (12, 4)
    np.testing.assert_allclose(path[[0, -1]], [z0, z1], atol=1e-5)
    # evenly resampled: equal steps along the path
    steps = np.linalg.norm(np.diff(path, axis=0), axis=1)
    assert steps.max() <= 1.5 * np.median(steps) + 1e-6


def test_knn_path_is_connected_and_follows_the_data():
    # Two dense arms of a "V": the shortest graph path between the tips goes through the apex,
    # not straight across the empty gap between the arms.
    t = np.linspace(0, 1, 200)
    arm1 = np.stack([t, t], 1)
    arm2 = np.stack([-t, t], 1)
    x = np.concatenate([arm1, arm2]).astype(np.float32)
    path = ex.graph_path(x, 199, 399, k=4)
    assert path[0] == 199 and path[-1] == 399
    graph = ex.knn_graph(x, 4)
    assert all(graph[a, b] > 0 for a, b in zip(path[:-1], path[1:]))  # every step is a graph edge
    assert np.abs(x[path, 1]).min() < 0.02  # passes the apex
    with pytest.raises(ValueError, match="separate clusters"):
        ex.graph_path(np.concatenate([x, x + 100]), 0, 500, k=4)


def test_pc_traversal_spans_the_first_pc(latents):
    e = ex.Explorer.__new__(ex.Explorer)  # only the latents are needed
    e.latents, e._pca = latents, None
    zs = e.pc_traversal(1, 9)
    s = e.pca.transform(zs)
    assert s[0, 0] < -3 and s[-1, 0] > 3
    np.testing.assert_allclose(s[:, 1:], 0, atol=1e-5)


def test_map_series_headers_are_chimerax_ready(tmp_path):
    vols = [np.random.default_rng(i).random((16, 16, 16)).astype(np.float32) for i in range(3)]
    r = ex.PartReadout(np.array([1.0, 2.0]), np.zeros((2, 3)), np.array([1.0, 0.5]))
    paths = ex.write_map_series(tmp_path / "tr", vols, 2.5, latents=np.zeros((3, 4)), readouts=[r, r, r])
    assert [p.name for p in paths] == ["vol_000.mrc", "vol_001.mrc", "vol_002.mrc"]
    for p, v in zip(paths, vols):
        m = read_map(p)
        np.testing.assert_array_equal(m.data, v)
        assert m.apix == pytest.approx(2.5)
        np.testing.assert_allclose(m.origin, [-20.0, -20.0, -20.0])
    assert "vseries true" in (tmp_path / "tr" / "README.txt").read_text()
    assert len((tmp_path / "tr" / "parts.csv").read_text().splitlines()) == 1 + 3 * 2


def test_display_rasteriser_matches_the_reference():
    rng = np.random.default_rng(1)
    G, D, apix = 300, 24, 3.0
    c = torch.as_tensor(rng.normal(0, 15, (G, 3)), dtype=torch.float32)
    s = torch.as_tensor(rng.uniform(2.0, 5.0, G), dtype=torch.float32)
    m = torch.as_tensor(rng.uniform(0.2, 1.0, G), dtype=torch.float32)
    ref = rasterize_dense(c, s, m, D, apix)
    fast = rasterize(c, s, m, D, apix, window=ex.DISPLAY_WINDOW)
    # truncation at 4 widths: at most exp(-8) = 3.4e-4 of a peak per Gaussian
    assert float((fast - ref).abs().max()) <= 2e-3 * float(ref.abs().max())


def _two_part_model(angle_deg: float, shift_a: float) -> PartAwareModel:
    """A 2-part model whose anchor MLP outputs a fixed motion for part 2 (part 1 at rest)."""
    rng = np.random.default_rng(2)
    cfg = HierarchicalConfig(n_gaussians=64, hidden=8, depth=1)
    centres = np.concatenate([rng.normal([-20, 0, 0], 4, (32, 3)), rng.normal([20, 0, 0], 4, (32, 3))])
    part = np.repeat([0, 1], 32)
    anchors = np.stack([centres[:32].mean(0), centres[32:].mean(0)])
    model = PartAwareModel(centres, np.full(64, 4.0), np.ones(64), part, anchors, np.eye(2, cfg.feature_dim),
                           np.zeros((10, 4), np.float32), 32, 3.0, cfg)
    with torch.no_grad():  # head bias: rotvec (3) then translation (3, pixels); zero weights
        model.anchor_mlp.head.bias.zero_()
        model.anchor_mlp.head.weight.zero_()
        model.anchor_mlp.z_in.weight.zero_()
        model.anchor_mlp.z_in.bias.zero_()
        # feature 1 (part 2) drives the output through the first layer
        model.anchor_mlp.f_in.weight.zero_()
        model.anchor_mlp.f_in.weight[0, 1] = 1.0
        model.anchor_mlp.head.weight[2, 0] = math.radians(angle_deg)
        model.anchor_mlp.head.weight[3, 0] = shift_a / 3.0
    return model


def test_readout_gives_the_known_part_motion():
    model = _two_part_model(30.0, 6.0)
    e = ex.Explorer(model, np.zeros((10, 4), np.float32), model.part_index.numpy())
    f = e.frame(np.zeros(4), labels=True)
    np.testing.assert_allclose(f.readout.angle_deg, [0.0, 30.0], atol=1e-3)
    np.testing.assert_allclose(f.readout.shift, [0.0, 6.0], atol=1e-3)
    assert f.volume.shape == (32, 32, 32) and f.labels.shape == (32, 32, 32)
    assert set(np.unique(f.labels)) == {0, 1, 2}
    # the rigid fit used for stage-1 runs recovers the same motion from the decoded centres
    with torch.no_grad():
        moved = model.decode(torch.zeros(1, 4))[0][0].numpy()
    angle, t = ex.rigid_fit(model.centres.detach().numpy()[32:], moved[32:], np.ones(32))
    assert angle == pytest.approx(30.0, abs=1e-3)


def test_selection_export_keeps_every_column(tmp_path):
    import starfile

    from cryospire_core.sim.simulate import simulate, write_simulation

    star = write_simulation(tmp_path / "d", simulate("hinge", 16, 40, snr=1.0, seed=0)) / "particles.star"
    rows = np.array([3, 5, 11, 30])
    out, index = ex.write_selection(tmp_path / "sel" / "keep.star", rows, star)
    full, sub = starfile.read(star), starfile.read(out)
    assert list(sub["particles"].columns) == list(full["particles"].columns)
    for col in full["particles"].columns:
        if col != "rlnImageName":
            np.testing.assert_array_equal(sub["particles"][col].to_numpy(), full["particles"][col].to_numpy()[rows])
    assert np.loadtxt(index, dtype=int).tolist() == rows.tolist()
    from cryospire_core.io.load import load_particles
    from cryospire_core.io.selection import read_selection

    assert read_selection(out, load_particles(star)).tolist() == rows.tolist()
    with pytest.raises(InputError, match="keep_indices.txt: selection file: expected a file name not in use"):
        ex.write_selection(tmp_path / "sel" / "keep.cs", rows, star)  # its index file is keep.star's
    assert not (tmp_path / "sel" / "keep.cs").exists()
    cs, _ = ex.write_selection(tmp_path / "sel" / "keep.cs", rows, star, overwrite=True)
    assert read_selection(cs, load_particles(star)).tolist() == rows.tolist()


def test_branch_run_copies_stage_1_and_sets_the_selection(tmp_path):
    import json

    src = tmp_path / "run"
    for stage in ("consensus", "discovery", "parts", "hierarchical"):
        (src / stage).mkdir(parents=True)
        (src / stage / "x.npz").write_bytes(b"data")
    (src / "discovery" / "checkpoint.pt").write_bytes(b"old")
    (src / "config.json").write_text(json.dumps({"format_version": 1, "train": {"select": None}, "n_particles": 10}))
    keep = tmp_path / "keep.txt"
    keep.write_text("1\n2\n")
    dst = ex.branch_run(src, tmp_path / "sub", keep)
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "consensus", "discovery", "parts"]
    assert not (dst / "discovery" / "checkpoint.pt").exists() and (dst / "parts" / "x.npz").is_file()
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["train"]["select"] == str(keep.resolve()) and cfg["n_particles"] == 10
    with pytest.raises(Exception, match="empty or new folder"):
        ex.branch_run(src, dst, keep)


def test_live_frames_in_bfloat16_stay_within_a_percent_of_float32():
    model = _two_part_model(30.0, 6.0)
    with torch.no_grad():  # make the per-Gaussian networks do real work
        for mlp in (model.residual_mlp, model.presence_mlp):
            mlp.head.weight.normal_(0.0, 0.3)
    e = ex.Explorer(model, np.zeros((10, 4), np.float32), model.part_index.numpy())
    assert e.live_precision() in ("bf16", "fp32")
    e._bf16_faster = True  # the bfloat16 path whatever this CPU's timing chose
    z = np.full(4, 0.7, np.float32)
    exact, live = e.frame(z, readout=False).volume, e.frame(z, readout=False, live=True).volume
    assert not np.array_equal(exact, live)  # the networks did run in bfloat16
    assert np.abs(live - exact).max() < 0.01 * np.abs(exact).max()


def test_umap_embedding_inverse_stays_in_the_picked_cluster():
    pytest.importorskip("umap")  # the optional extra cryospire-napari[umap]; installed for the tests
    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.normal(0, 0.3, (300, 4)), rng.normal(3, 0.3, (300, 4))]).astype(np.float32)
    emb = ex.umap_embedding(lat, seed=0)
    assert emb.method == "umap" and emb.points.shape == (600, 2)
    z = emb.to_latent(emb.points[[0, 450]])
    assert np.linalg.norm(z[0]) < 1.0 and np.linalg.norm(z[1] - 3.0) < 1.0
