"""Part discovery: clustering rules on synthetic features, editing, hand-off, label maps, masks."""

from __future__ import annotations

import time

import mrcfile
import numpy as np
import pytest

from cryospire_core.imaging.lattice import Lattice
from cryospire_core.io.mrc import write_map
from cryospire_core.models import parts
from cryospire_core.sim.phantoms import make_phantom

F = 24
BLOBS = np.array([[-60.0, 0.0, 0.0], [60.0, 0.0, 0.0], [0.0, 80.0, 0.0]])


def _synthetic(n_per: int = 100, elongated: bool = False, seed: int = 0):
    """Three groups of Gaussians: features from three well-separated clusters (+ noise), centres
    in three blobs (Å); with ``elongated`` the third group is a 400 Å rod instead of a blob (its radius of
    gyration, ~115 Å, exceeds the whole set's, ~92 Å).
    Returns features (G, F), centres (G, 3), amplitudes (G,), truth (G,)."""
    rng = np.random.default_rng(seed)
    feature_centres = rng.normal(size=(3, F)) * 3.0
    feats, cents = [], []
    for k in range(3):
        feats.append(feature_centres[k] + rng.normal(scale=0.5, size=(n_per, F)))
        if elongated and k == 2:
            rod = np.c_[rng.uniform(-200, 200, n_per), rng.normal(scale=5, size=(n_per, 2))]
            cents.append(BLOBS[k] + rod)
        else:
            cents.append(BLOBS[k] + rng.normal(scale=8.0, size=(n_per, 3)))
    amps = rng.uniform(0.5, 1.5, 3 * n_per)
    return np.concatenate(feats), np.concatenate(cents), amps, np.repeat(np.arange(3), n_per)


def test_three_groups_give_three_parts_exactly():
    f, c, a, truth = _synthetic()
    res = parts.discover_parts(f, c, a, seed=1)
    assert res.n_level1 == 3 and res.n_parts == 3
    assert parts.adjusted_rand(res.part_index, truth) == 1.0
    assert list(res.level1_k) == list(range(2, 9))
    assert int(res.level1_k[np.argmax(res.level1_silhouette)]) == 3
    assert "K1=3" in res.rule
    # Anchors: a Gaussian of the part, the one nearest the part's weighted centroid.
    for k in range(3):
        members = np.flatnonzero(res.part_index == k)
        centroid = np.average(c[members], axis=0, weights=a[members])
        d = np.linalg.norm(c[members] - centroid, axis=1)
        assert res.anchor_index[k] == members[np.argmin(d)]
        np.testing.assert_array_equal(res.anchor_centres[k], c[res.anchor_index[k]].astype(np.float32))
        np.testing.assert_array_equal(res.anchor_features[k], f[res.anchor_index[k]].astype(np.float32))


def test_featureless_gaussians_give_one_level1_cluster():
    rng = np.random.default_rng(2)
    c = rng.normal(scale=10.0, size=(300, 3))
    res = parts.discover_parts(rng.normal(size=(300, F)), c, np.ones(300), seed=0)
    assert res.n_level1 == 1
    assert res.level1_silhouette.max() < parts.ONE_PART_SILHOUETTE
    assert "K1=1" in res.rule


def _rigid_hinge(seed: int = 3, G: int = 300, N: int = 96, apix: float = 6.0):
    """Two touching domains of Gaussians (Å): domain 1 swings about a pivot by a per-image angle,
    domain 0 stays; a tenth of the Gaussians are light and their decoded shifts are pure noise
    (as for junk Gaussians of a trained model). Returns centres, masses, shifts (N, G, 3) Å,
    gates (N, G), truth (G,), light (G,) bool."""
    rng = np.random.default_rng(seed)
    truth = np.repeat([0, 1], G // 2)
    centres = np.where(truth[:, None] == 0, [-30.0, 0, 0], [30.0, 0, 0]) + rng.normal(scale=7.0, size=(G, 3))
    angles = np.deg2rad(rng.uniform(-40, 40, N))
    rel = centres - [0.0, 0.0, 0.0]
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    moved = np.stack([cos * rel[:, 0] - sin * rel[:, 1], sin * rel[:, 0] + cos * rel[:, 1],
                      np.broadcast_to(rel[:, 2], (N, G))], axis=2)
    shifts = np.where(truth[None, :, None] == 1, moved - rel, 0.0) + rng.normal(scale=0.5, size=(N, G, 3))
    light = rng.random(G) < 0.1
    shifts[:, light] = rng.normal(scale=15.0, size=(N, light.sum(), 3))
    masses = np.where(light, 0.02, 1.0)
    gates = np.clip(rng.normal(0.95, 0.02, size=(N, G)), 0, 1)
    return centres, masses, shifts, gates, truth, light


def test_dynamics_find_a_rigidly_moving_domain_that_features_miss():
    """Features carry almost nothing; the decoded motion separates the swinging domain, and the
    neighbour averaging puts the light noisy Gaussians with their neighbourhood."""
    c, m, shifts, gates, truth, light = _rigid_hinge()
    feats = np.random.default_rng(0).normal(size=(len(c), F))
    assert parts.discover_parts(feats, c, m, n_level2=None, seed=0).n_level1 == 1
    dyn = parts.dynamics_signature(shifts, gates, c, m, apix=6.0)
    assert dyn.shape == (len(c), parts.DYNAMICS_COMPONENTS)
    res = parts.discover_parts(feats, c, m, dyn, gates.mean(0), n_level2=None, seed=0)
    assert res.n_level1 == 2
    assert parts.adjusted_rand(res.part_index, truth) > 0.95
    assert parts.adjusted_rand(res.part_index[light], truth[light]) > 0.8
    # Without the averaging the light Gaussians' noise dominates their rows.
    raw = parts.dynamics_signature(shifts, gates, c, m, apix=6.0, neighbours=1)
    assert parts.adjusted_rand(parts.discover_parts(feats, c, m, raw, n_level1=2, n_level2=None).part_index,
                               truth) < parts.adjusted_rand(res.part_index, truth)


def _misplaced(truth: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """truth with the swinging arm's far end given to the static domain and the static domain's
    far end to the arm (what a clustering of motion profiles does near an axis, and worse)."""
    start = truth.copy()
    start[(truth == 1) & (centres[:, 0] > 36)] = 0
    start[(truth == 0) & (centres[:, 0] < -36)] = 1
    return start


def test_rigid_reassignment_moves_misplaced_gaussians_back():
    c, m, shifts, gates, truth, _ = _rigid_hinge()
    start = _misplaced(truth, c)
    moved = parts.rigid_reassign(start, shifts / 6.0, gates, c, m)
    assert parts.adjusted_rand(start, truth) < 0.6
    # The light Gaussians, whose decoded motion is noise, follow their neighbourhood without swaying it.
    assert parts.adjusted_rand(moved, truth) > 0.95


def test_rigid_reassignment_keeps_parts_that_differ_by_presence_alone():
    c, m, _, _, truth, _ = _rigid_hinge()
    shifts = np.zeros((40, len(c), 3))  # nothing moves; domain 1 comes and goes
    gates = np.ones((40, len(c)))
    gates[::2, truth == 1] = 0.0
    moved = parts.rigid_reassign(truth, shifts, gates, c, m)
    assert parts.adjusted_rand(moved, truth) > 0.95  # the neighbour averaging may move a few at the interface


@pytest.mark.parametrize("robust", [True, False])
def test_a_few_heavy_joiners_that_move_do_not_pull_a_static_part_apart(monkeypatch, robust):
    """Two touching static blocks A and C, and on A's other side a block B that shifts image by
    image; B's four Gaussians nearest A, heavier than the rest (10% of A's mass with them), start
    in A. A plain mass-weighted fit of A follows them part of the way, and C's fit (no motion)
    then explains A's own Gaussians better: A drains into C. The refitted, Cauchy-weighted fit
    hardly moves, so A keeps its Gaussians and the joiners go back to B."""
    if not robust:
        monkeypatch.setattr(parts, "ROBUST_SCALE", np.inf)  # the plain fit: what the test guards against
    block = np.stack(np.meshgrid(np.arange(3), np.arange(4), np.arange(5), indexing="ij"), -1).reshape(-1, 3) * 3.0
    c = np.concatenate([block, block + [12.0, 0, 0], block - [9.0, 0, 0]])
    truth = np.repeat([0, 1, 2], len(block))
    start = truth.copy()
    in_b = np.flatnonzero(truth == 2)
    joiners = in_b[np.argsort(-c[in_b, 0], kind="stable")[:4]]
    start[joiners] = 0
    masses = np.ones(len(c))
    masses[joiners] = len(block) / 9 / len(joiners)
    motion = np.zeros((64, len(c), 3))
    motion[:, truth == 2, 1] = np.random.default_rng(0).normal(scale=3.0, size=(64, 1))
    moved = parts.rigid_reassign(start, motion, np.ones((64, len(c))), c, masses)
    if robust:
        np.testing.assert_array_equal(moved, truth)
    else:
        assert np.mean(moved[truth == 0] == 0) < 0.5


def test_ties_near_a_twist_axis_go_to_the_spatial_majority():
    """A domain that turns about its own long axis: its Gaussians near the axis hardly move, so the
    static core's rigid fit explains them about as well as the domain's, and those that start in
    the core stay there after the reassignment. Space settles the tie: they are surrounded by
    the domain."""
    rng = np.random.default_rng(1)
    n, S = 200, 64
    core = np.c_[rng.uniform(-60, -5, n), rng.normal(0, 8, (n, 2))]
    radius, phi = np.sqrt(rng.uniform(0, 1, n)) * 15, rng.uniform(0, 2 * np.pi, n)
    c = np.concatenate([core, np.c_[rng.uniform(5, 60, n), radius * np.cos(phi), radius * np.sin(phi)]])
    truth = np.repeat([0, 1], n)
    angle = np.deg2rad(rng.uniform(-15, 15, S))[:, None]
    y, z = c[:, 1], c[:, 2]
    twisted = np.stack([np.broadcast_to(c[:, 0], (S, 2 * n)), np.cos(angle) * y - np.sin(angle) * z,
                        np.sin(angle) * y + np.cos(angle) * z], axis=2)
    shifts = np.where(truth[None, :, None] == 1, twisted - c, 0.0) + rng.normal(scale=0.5, size=(S, 2 * n, 3))
    gates, m = np.ones((S, 2 * n)), np.ones(2 * n)
    axis = (truth == 1) & (np.hypot(y, z) < 7)
    moved = parts.rigid_reassign(np.where(axis, 0, truth), shifts / 6.0, gates, c, m)
    assert np.mean(moved[axis] == 1) < 0.9
    settled = parts.settle_ties(moved, shifts / 6.0, gates, c, m)
    assert np.all(settled[axis] == 1)
    assert parts.adjusted_rand(settled, truth) > 0.98


def test_a_subunit_that_comes_and_goes_with_the_core_still_is_cut_out_by_presence():
    """Two touching domains that never move, the second absent from 30% of the images: one
    level-1 cluster and one compact piece, so only presence can tell them apart. A part present
    throughout, with noisy gates, stays whole."""
    rng = np.random.default_rng(2)
    n, S = 150, 80
    c = np.concatenate([rng.normal(0, 7, (n, 3)) + [-15.0, 0, 0], rng.normal(0, 7, (n, 3)) + [15.0, 0, 0]])
    truth = np.repeat([0, 1], n)
    gates = np.clip(rng.normal(0.95, 0.05, (S, 2 * n)), 0, 1)
    absent = rng.random(S) < 0.3
    gates[np.ix_(absent, truth == 1)] = rng.uniform(0, 0.1, (absent.sum(), n))
    m, feats, motion = np.ones(2 * n), np.zeros((2 * n, 4)), rng.normal(scale=0.1, size=(S, 2 * n, 3))
    res = parts.discover_parts(feats, c, m, np.zeros((2 * n, 2), np.float32), n_level1=1, motion=motion, gates=gates)
    assert "parts cut by presence: 1" in res.rule
    assert parts.adjusted_rand(res.part_index, truth) > 0.9
    whole = parts.split_by_presence(np.zeros(n, np.int64), gates[:, :n], c[:n], m[:n], min_size=8)
    assert np.all(whole == 0)


def test_parts_end_with_the_rigid_reassignment_when_given_the_motion(tmp_path):
    """Level 1 on a displacement signature cut by hand into the wrong two groups (n_level1 given:
    level 1 only sees the profiles); with the motion the parts come back to the rigid domains,
    and the saved inputs re-cluster to the same parts."""
    c, m, shifts, gates, truth, _ = _rigid_hinge()
    feats = np.zeros((len(c), 4))
    signature = np.eye(2, dtype=np.float32)[_misplaced(truth, c)] * 10  # level 1 finds exactly the wrong groups
    plain = parts.discover_parts(feats, c, m, signature, gates.mean(0), n_level1=2, n_level2=None)
    refined = parts.discover_parts(feats, c, m, signature, gates.mean(0), n_level1=2, n_level2=None,
                                   motion=shifts / 6.0, gates=gates)
    assert "rigid reassignment" not in plain.rule and "rigid reassignment" in refined.rule
    assert parts.adjusted_rand(plain.part_index, truth) < 0.6
    assert parts.adjusted_rand(refined.part_index, truth) > 0.95
    assert sorted(refined.level1) == [0, 1]
    refined.to_npz(tmp_path / "clustering.npz")
    back = parts.PartClustering.from_npz(tmp_path / "clustering.npz")
    assert back.inputs.motion.shape == shifts.shape and back.inputs.gates.shape == gates.shape
    np.testing.assert_array_equal(parts.recluster(back.inputs, 2, None).part_index, refined.part_index)


def test_level2_cuts_again_what_the_rigid_reassignment_joins():
    """Two static domains far apart (A, B) and an arm (C) swinging off B. Level 1, cut by hand,
    gives B the arm's near half: that part's rigid fit is then a compromise that explains B's
    Gaussians worse than A's static fit, so the reassignment moves B into A's part, one part
    made of two separate blobs (what it did to the ``hinge`` preset's Fc and Fab_a). Level 2's
    own rule cuts it again; with level 2 off it stays."""
    rng = np.random.default_rng(0)
    n, S = 120, 64
    c = np.concatenate([rng.normal(0, 6, (n, 3)) + [-75.0, 0, 0], rng.normal(0, 6, (n, 3)),
                        np.c_[rng.uniform(12, 60, 2 * n), rng.normal(0, 5, (2 * n, 2))]])
    truth = np.repeat([0, 1, 2], [n, n, 2 * n])
    angles = np.deg2rad(rng.uniform(-30, 30, S))
    rel = c - [8.0, 0, 0]
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    swung = np.stack([cos * rel[:, 0] - sin * rel[:, 1], sin * rel[:, 0] + cos * rel[:, 1],
                      np.broadcast_to(rel[:, 2], (S, len(c)))], axis=2)
    shifts = np.where(truth[None, :, None] == 2, swung - rel, 0.0) + rng.normal(scale=0.5, size=(S, len(c), 3))
    gates, m, feats = np.ones((S, len(c))), np.ones(len(c)), np.zeros((len(c), 4))
    start = np.where((truth == 2) & (c[:, 0] < 30), 1, truth)
    signature = np.eye(3, dtype=np.float32)[start] * 10
    kw = dict(n_level1=3, motion=shifts / 6.0, gates=gates)
    joined = parts.discover_parts(feats, c, m, signature, n_level2=None, **kw)
    assert joined.part_index[0] == joined.part_index[n]  # A and B one part
    res = parts.discover_parts(feats, c, m, signature, **kw)
    assert len(set(res.part_index[:n]) & set(res.part_index[n:2 * n])) == 0
    assert "then level 2 again" in res.rule and "level 2 again" not in joined.rule
    for k in np.unique(res.part_index):  # every part within one domain
        assert np.bincount(truth[res.part_index == k]).max() >= 0.9 * np.count_nonzero(res.part_index == k)


def test_motion_and_gates_are_checked_together():
    c, m, shifts, gates, _, _ = _rigid_hinge()
    feats = np.zeros((len(c), 4))
    with pytest.raises(ValueError, match="both or neither"):
        parts.clustering_inputs(feats, c, m, motion=shifts)
    with pytest.raises(ValueError, match="motion must be"):
        parts.clustering_inputs(feats, c, m, motion=shifts[:, :10], gates=gates)


def test_gates_separate_gaussians_that_appear_together():
    """No motion at all, but half the Gaussians are switched off in half the images: the gates in
    the dynamics find the two groups, and each part's presence is its mean gate."""
    rng = np.random.default_rng(3)
    G, N = 200, 64
    c = rng.normal(scale=10.0, size=(G, 3))
    gates = np.clip(rng.normal(0.95, 0.03, size=(N, G)), 0, 1)
    gates[: N // 2, G // 2:] = np.clip(rng.normal(0.05, 0.03, size=(N // 2, G // 2)), 0, 1)
    truth = np.repeat([0, 1], G // 2)
    shifts = rng.normal(scale=0.3, size=(N, G, 3))
    dyn = parts.dynamics_signature(shifts, gates, c, np.ones(G), apix=6.0, neighbours=1)
    res = parts.discover_parts(rng.normal(size=(G, F)), c, np.ones(G), dyn, gates.mean(0), n_level2=None, seed=0)
    assert res.n_level1 == 2
    assert parts.adjusted_rand(res.part_index, truth) == 1.0
    pres = res.part_presence[res.part_index[[0, G - 1]]]
    assert pres[0] > 0.9 and 0.4 < pres[1] < 0.6


def test_level2_splits_an_elongated_region_into_compact_parts():
    f, c, a, truth = _synthetic(elongated=True)
    res = parts.discover_parts(f, c, a, seed=0)
    assert res.n_level1 == 3
    per_gaussian_level1 = res.level1[res.part_index]
    assert parts.adjusted_rand(per_gaussian_level1, truth) == 1.0
    rod_parts = np.unique(res.part_index[truth == 2])
    assert len(rod_parts) >= 2
    for k in range(res.n_parts):  # no part mixes groups
        assert len(np.unique(truth[res.part_index == k])) == 1
    assert len(np.unique(res.part_index[truth == 0])) == 1 and len(np.unique(res.part_index[truth == 1])) == 1
    limit = parts.MAX_PART_RG * res.molecule_rg
    assert np.all(res.part_rg <= limit)
    rod_rg = parts._rg(c[truth == 2], a[truth == 2])
    assert rod_rg > limit  # the rod really needed splitting


def test_level2_splits_separate_blobs_sharing_a_feature_by_silhouette():
    """Two small distant blobs with one feature (e.g. two Fabs moving alike) become two parts."""
    rng = np.random.default_rng(4)
    c = np.concatenate([BLOBS[0] + rng.normal(scale=5, size=(80, 3)), BLOBS[1] + rng.normal(scale=5, size=(80, 3)),
                        rng.normal(scale=40, size=(240, 3))])
    f = np.concatenate([np.full((160, F), 4.0), np.zeros((240, F))]) + rng.normal(scale=0.3, size=(400, F))
    res = parts.discover_parts(f, c, np.ones(400), n_level1=2, seed=0)
    assert res.part_index[0] != res.part_index[100]
    assert len(np.unique(res.part_index[:80])) == 1 and len(np.unique(res.part_index[80:160])) == 1


def test_overrides_and_determinism(tmp_path):
    f, c, a, _ = _synthetic()
    two = parts.discover_parts(f, c, a, n_level1=2, n_level2=None, seed=0)
    assert two.n_level1 == 2 and two.n_parts == 2 and len(two.level1_k) == 0
    six = parts.discover_parts(f, c, a, n_level1=3, n_level2=2, seed=0)
    assert six.n_parts == 6 and list(np.bincount(six.level1)) == [2, 2, 2]
    with pytest.raises(ValueError, match="n_level1"):
        parts.discover_parts(f, c, a, n_level1=0)

    a1 = parts.discover_parts(f, c, a, seed=5)
    a2 = parts.discover_parts(f, c, a, seed=5)
    np.testing.assert_array_equal(a1.part_index, a2.part_index)
    np.testing.assert_array_equal(a1.anchor_index, a2.anchor_index)

    six.to_npz(tmp_path / "clustering.npz")
    back = parts.PartClustering.from_npz(tmp_path / "clustering.npz")
    np.testing.assert_array_equal(back.part_index, six.part_index)
    np.testing.assert_array_equal(back.anchor_features, six.anchor_features)
    assert back.rule == six.rule and back.n_level1 == 3
    again = parts.recluster(back.inputs, 3, 2)
    np.testing.assert_array_equal(again.part_index, six.part_index)


def test_recluster_is_fast_at_2048_gaussians():
    f, c, a, _ = _synthetic(n_per=683)
    inputs = parts.clustering_inputs(f[:2048], c[:2048], a[:2048], seed=0)
    parts.recluster(inputs, 3, 2)  # warm-up (imports, thread pools)
    given = min(_timed(lambda: parts.recluster(inputs, 3, 2)) for _ in range(3))
    auto = min(_timed(lambda: parts.recluster(inputs)) for _ in range(2))
    assert given < 1.0, given
    assert auto < 1.0, auto


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def test_merge_and_split_parts():
    idx = np.array([0, 0, 1, 1, 2, 2, 3])
    np.testing.assert_array_equal(parts.merge_parts(idx, 0, 2), [0, 0, 1, 1, 0, 0, 2])
    np.testing.assert_array_equal(parts.merge_parts(idx, 3, 1), [0, 0, 2, 2, 1, 1, 2])
    with pytest.raises(ValueError):
        parts.merge_parts(idx, 1, 1)
    rng = np.random.default_rng(0)
    centres = np.concatenate([rng.normal(-50, 2, (10, 3)), rng.normal(50, 2, (10, 3)), rng.normal(0, 2, (5, 3))])
    before = np.r_[np.zeros(20, int), np.ones(5, int)]
    after = parts.split_part(before, centres, 0, 2)
    np.testing.assert_array_equal(after, np.r_[np.zeros(10, int), np.full(10, 2), np.ones(5, int)])
    with pytest.raises(ValueError):
        parts.split_part(before, centres, 1, 6)


def test_edited_parts_get_new_anchors():
    f, c, a, truth = _synthetic()
    res = parts.discover_parts(f, c, a, seed=0)
    merged = parts.with_part_index(res, parts.merge_parts(res.part_index, 0, 1))
    assert merged.n_parts == 2 and merged.part_index[truth == 2][0] == 1
    assert merged.anchor_index[1] == res.anchor_index[2]  # the untouched part keeps its anchor
    assert merged.part_index[merged.anchor_index[0]] == 0 and "edited" in merged.rule
    split = parts.with_part_index(res, parts.split_part(res.part_index, c, 2, 2))
    assert split.n_parts == 4 and list(split.level1) == [0, 1, 2, 2]
    with pytest.raises(ValueError):
        parts.with_part_index(res, np.where(res.part_index == 1, 2, res.part_index))  # label 1 unused


def test_assign_to_parts_uses_nearest_coarse_gaussian():
    coarse = np.array([[0.0, 0, 0], [10, 0, 0], [20, 0, 0]])
    new = np.array([[1.0, 0, 0], [9, 1, 0], [30, 0, 0], [14, 0, 0], [16, 0, 0]])
    np.testing.assert_array_equal(parts.assign_to_parts(new, coarse, np.array([2, 0, 1])), [2, 0, 1, 0, 1])


def _two_part_mixture():
    """Two parts of 20 Gaussians each, around x = -12 Å and x = +12 Å, on a 32-voxel lattice of 2 Å."""
    rng = np.random.default_rng(0)
    centres = np.concatenate([rng.normal(scale=2.0, size=(20, 3)) + [-12, 0, 0],
                              rng.normal(scale=2.0, size=(20, 3)) + [12, 0, 0]])
    return centres, np.full(40, 2.5), np.ones(40), np.repeat([0, 1], 20), Lattice(32, 2.0)


def _voxel(xyz, lattice):
    """(z, y, x) index of the voxel nearest to the point (x, y, z) Å."""
    return tuple(int(round(v / lattice.apix)) + lattice.centre for v in xyz[::-1])


def test_part_label_volume_labels_each_parts_density():
    centres, widths, amps, idx, lattice = _two_part_mixture()
    labels = parts.part_label_volume(centres, widths, amps, idx, lattice)
    assert labels.dtype == np.int32 and labels.shape == lattice.shape
    assert set(np.unique(labels)) == {0, 1, 2}
    for g in range(40):
        assert labels[_voxel(centres[g], lattice)] == idx[g] + 1
    assert labels[0, 0, 0] == 0 and labels[_voxel([0, 28, 0], lattice)] == 0
    # An explicit threshold above the maximum leaves nothing.
    assert parts.part_label_volume(centres, widths, amps, idx, lattice, threshold=1e9).max() == 0


def test_part_masks_are_soft_and_written_with_the_voxel_size(tmp_path):
    box, apix = 32, 2.0
    labels = np.zeros((box,) * 3, np.int32)
    labels[12:20, 12:20, 4:12] = 1
    labels[12:20, 12:20, 20:28] = 2
    masks = parts.part_masks(labels, apix, soft_edge_px=4.0, dilate_px=1.0)
    assert masks.shape == (2, box, box, box) and masks.dtype == np.float32
    assert masks.min() >= 0.0 and masks.max() <= 1.0
    assert np.all(masks[0][labels == 1] == 1.0) and np.all(masks[1][labels == 2] == 1.0)
    row = masks[0][16, 16, :]  # along x through part 1 (x = 4..11)
    assert row[12] == 1.0  # within the 1 px dilation
    assert 0.0 < row[14] < 1.0 and row[14] > row[15]  # the raised-cosine edge
    assert row[17] == 0.0 and masks[0][labels == 2].max() == 0.0  # beyond 1 + 4 px, and far away
    assert parts.part_masks(labels, apix, n_parts=3)[2].max() == 0.0  # an empty part gets an empty mask
    write_map(tmp_path / "mask_part_01.mrc", masks[0], apix)
    with mrcfile.open(tmp_path / "mask_part_01.mrc") as m:
        assert float(m.voxel_size.x) == pytest.approx(apix)
        np.testing.assert_array_equal(m.data, masks[0])


def test_part_discovery_recovers_a_phantom_s_domains_from_features_that_encode_them():
    ph = make_phantom("hinge", 32, 4.0, seed=0)
    rng = np.random.default_rng(0)
    pick = rng.choice(ph.n_beads, size=min(400, ph.n_beads), replace=False)
    centres = ph.centres[0, pick] + rng.normal(scale=0.2, size=(len(pick), 3))
    domains = ph.domains[pick]
    # Features that encode the domain (what stage 1 should learn) recover the domains.
    n_dom = int(ph.domains.max()) + 1
    code = rng.normal(size=(n_dom, F)) * 3
    feats = code[domains] + rng.normal(scale=0.5, size=(len(pick), F))
    res = parts.discover_parts(feats, centres, np.ones(len(pick)), n_level2=None, seed=0)
    assert parts.adjusted_rand(res.part_index, domains) == pytest.approx(1.0)


def test_a_handful_of_odd_gaussians_is_not_a_part():
    """Three Gaussians inside blob 0 with features unlike anything else: automatic level 1 puts
    them with their spatial neighbours instead of making a three-Gaussian part."""
    f, c, a, truth = _synthetic()
    odd_f = np.full((3, F), 25.0)
    odd_c = BLOBS[0] + np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    res = parts.discover_parts(np.r_[f, odd_f], np.r_[c, odd_c], np.r_[a, np.ones(3)], seed=1)
    assert res.n_parts == 3
    assert np.all(res.part_index[-3:] == res.part_index[0])
    assert "join their spatial neighbours" in res.rule
