"""The explorer's core: PCA inverse, traversals, kNN paths, the display rasteriser against the
reference, part readouts of a model with known motions, k-means states and the mapping of
explored particles to the particle file (exports: test_services_explore.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryospire_core.analysis import explorer as ex
from cryospire_core.imaging.lattice import Lattice
from cryospire_core.imaging.render import rasterize
from cryospire_core.imaging.render_reference import rasterize_dense
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
    emb = ex.Embedding(ex.EmbeddingMethod.UMAP, ex.pca_embedding(latents).points, latents, None, k=1)
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


def test_display_rasteriser_matches_the_reference():
    rng = np.random.default_rng(1)
    G, lattice = 300, Lattice(24, 3.0)
    c = torch.as_tensor(rng.normal(0, 15, (G, 3)), dtype=torch.float32)
    s = torch.as_tensor(rng.uniform(2.0, 5.0, G), dtype=torch.float32)
    m = torch.as_tensor(rng.uniform(0.2, 1.0, G), dtype=torch.float32)
    ref = rasterize_dense(c, s, m, lattice)
    fast = rasterize(c, s, m, lattice, window=ex.DISPLAY_WINDOW)
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
                           np.zeros((10, 4), np.float32), Lattice(32, 3.0), cfg)
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
        moved = model.decode(torch.zeros(1, 4)).centres[0].numpy()
    angle, t = ex.rigid_fit(model.centres.detach().numpy()[32:], moved[32:], np.ones(32))
    assert angle == pytest.approx(30.0, abs=1e-3)


def test_traversal_carries_the_readout_at_each_step(latents):
    model = _two_part_model(30.0, 6.0)
    e = ex.Explorer(model, latents, model.part_index.numpy())
    trav = e.traversal(ex.TraversalKind.LINE, 5, latents[3], latents[400])
    assert isinstance(trav, ex.Traversal) and len(trav) == 5 and len(trav.readouts) == 5
    np.testing.assert_allclose(trav.latents[[0, -1]], latents[[3, 400]], atol=1e-6)
    for z, r in zip(trav.latents, trav.readouts):
        np.testing.assert_array_equal(r.angle_deg, e.frame(z).readout.angle_deg)
    with pytest.raises(ValueError, match="graph needs both ends"):
        e.traversal(ex.TraversalKind.GRAPH, 5, latents[3])
    no_parts = ex.Explorer(model, latents).traversal(ex.TraversalKind.PC1, 4)
    assert no_parts.latents.shape == (4, 4) and no_parts.readouts == []


def test_states_and_their_centres_are_cached_per_k_and_seed(latents):
    from cryospire_core.analysis.latentspace import kmeans_states

    e = ex.Explorer(_two_part_model(0.0, 0.0), latents)
    for seed in (0, 1):  # a second seed is not answered from the first one's cache
        labels, centres = kmeans_states(latents, 3, seed)
        np.testing.assert_array_equal(e.states(3, seed), labels)
        np.testing.assert_array_equal(e.state_centres(3, seed), centres.astype(np.float32))
    assert e.states(3) is e.states(3)
    nearest = np.argmin(((latents[:, None] - e.state_centres(3)[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest, e.states(3))


def test_explored_rows_map_to_the_particle_file_through_the_selection(latents):
    model = _two_part_model(0.0, 0.0)
    every = ex.Explorer(model, latents)
    mask = np.zeros(500, bool)
    mask[[0, 5, 499]] = True
    assert every.particle_indices(mask).tolist() == [0, 5, 499]
    assert every.row_of(7) == 7 and every.row_of(500) is None and every.row_of(-1) is None
    keep = np.arange(0, 1500, 3)  # a stage-2 run that kept every third particle of 1,500
    kept = ex.Explorer(model, latents, selection=keep)
    assert kept.particle_indices(mask).tolist() == [0, 15, 1497]
    assert kept.row_of(15) == 5 and kept.row_of(16) is None and kept.row_of(1500) is None
    assert [kept.row_of(i) for i in kept.particle_indices(mask)] == [0, 5, 499]


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
    assert emb.method is ex.EmbeddingMethod.UMAP and emb.points.shape == (600, 2)
    z = emb.to_latent(emb.points[[0, 450]])
    assert np.linalg.norm(z[0]) < 1.0 and np.linalg.norm(z[1] - 3.0) < 1.0


def test_part_colourings_are_decoded_once_and_cached_in_the_run_folder(latents, tmp_path, monkeypatch):
    model = _two_part_model(30.0, 6.0)
    e = ex.Explorer(model, latents, model.part_index.numpy(), root=tmp_path)
    shift = e.colour_values(ex.ColourMode.DISPLACEMENT, part=1)
    with torch.no_grad():
        d = model.decode(torch.as_tensor(latents[:1]))
    rest = model.centres.detach()
    expected = float((d.centres[0, 32:] - rest[32:]).pow(2).sum(-1).mean().sqrt())
    assert shift.shape == (len(latents),) and expected > 6.0
    np.testing.assert_allclose(shift, expected, rtol=1e-5)  # part 2 moves the same at every latent
    np.testing.assert_allclose(e.colour_values(ex.ColourMode.DISPLACEMENT, part=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(e.colour_values(ex.ColourMode.PRESENCE, part=1), float(d.gates[0, 32:].mean()), rtol=1e-5)
    assert (tmp_path / "part_motions.npz").is_file()

    # A second explorer of the same run reads the file: nothing is decoded.
    again = ex.Explorer(model, latents, model.part_index.numpy(), root=tmp_path)
    monkeypatch.setattr(model, "decode", lambda z: pytest.fail("decoded although cached"))
    np.testing.assert_array_equal(again.colour_values(ex.ColourMode.DISPLACEMENT, part=1), shift)
    monkeypatch.undo()

    # A retrained model (other weights) is decoded afresh; so are other parts.
    moved = _two_part_model(30.0, 12.0)
    assert ex.Explorer(moved, latents, moved.part_index.numpy(), root=tmp_path).colour_values(
        ex.ColourMode.DISPLACEMENT, part=1)[0] > expected + 3.0
    swapped = 1 - moved.part_index.numpy()
    assert ex.Explorer(moved, latents, swapped, root=tmp_path).colour_values(
        ex.ColourMode.DISPLACEMENT, part=1)[0] == pytest.approx(0.0, abs=1e-5)


def test_part_colourings_of_a_read_only_run_are_kept_in_memory(latents, tmp_path):
    model = _two_part_model(30.0, 6.0)
    (tmp_path / "a file").write_text("")  # a folder below a file cannot be written, even by root
    e = ex.Explorer(model, latents, model.part_index.numpy(), root=tmp_path / "a file" / "run")
    first = e.colour_values(ex.ColourMode.PRESENCE, part=1)
    assert e.part_motions() is e.part_motions()
    np.testing.assert_array_equal(e.colour_values(ex.ColourMode.PRESENCE, part=1), first)
