"""Procedural phantoms: what moves, what disappears, the rendering's units and position, the hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist

from cryospire_core.imaging.lattice import Lattice
from cryospire_core.sim.phantoms import (
    PRESETS,
    make_phantom,
    rasterise,
    state_volume,
    state_volumes,
)

BOX = 32


def _domain(ph, name):
    return ph.domains == ph.domain_names.index(name)


@pytest.mark.parametrize("preset", PRESETS)
def test_basic_shape_and_sizes(preset):
    ph = make_phantom(preset, BOX, 6.0)
    S, G = ph.n_states, ph.n_beads
    assert ph.centres.shape == (S, G, 3) and ph.presence.shape == (S, G)
    assert ph.populations.sum() == pytest.approx(1.0) and np.all(ph.populations > 0)
    assert len(ph.state_names) == S == len(set(ph.state_names))
    sig_px = ph.sigmas / ph.apix
    assert sig_px.min() >= 1.0 and sig_px.max() <= 1.5
    # The molecule spans roughly 60% of the box and stays inside it in every state.
    on = ph.presence[0] > 0
    span = (pdist(ph.centres[0][on]).max() + 4 * ph.sigmas.mean()) / (BOX * ph.apix)
    assert 0.45 < span < 0.75
    assert np.abs(ph.centres).max() / ph.apix < 0.35 * BOX


def test_sizes_scale_with_pixel_size_and_seed_fixes_molecule():
    a, b = make_phantom("hinge", BOX, 2.0), make_phantom("hinge", BOX, 5.0)
    np.testing.assert_allclose(b.centres, a.centres * 2.5)
    np.testing.assert_allclose(b.sigmas, a.sigmas * 2.5)
    c = make_phantom("hinge", BOX, 2.0, seed=1)
    assert c.n_beads != a.n_beads or not np.allclose(c.centres, a.centres)
    # More pixels, more beads: the fine structure is set in pixels.
    assert make_phantom("homogeneous", 64, 6.0).n_beads > 3 * make_phantom("homogeneous", BOX, 12.0).n_beads


@pytest.mark.parametrize("preset", ["hinge", "random-hinge"])
def test_hinge_moves_one_domain_rigidly(preset):
    ph = make_phantom(preset, BOX, 4.0)
    assert ph.n_states == 100 and np.all(ph.presence == 1)
    moving = _domain(ph, "fab_b")
    # The core and the other arm never move.
    still = ph.centres[:, ~moving]
    np.testing.assert_array_equal(still, np.broadcast_to(still[:1], still.shape))
    # The hinged domain moves, rigidly (distances within it kept) about the hinge point.
    pivot = np.asarray(ph.info["motion"]["pivot_A"])
    ref = ph.centres[0, moving]
    assert np.all(np.abs(ph.centres[1:, moving] - ref).max(axis=(1, 2)) > 0)
    for k in (50, 99):
        cur = ph.centres[k, moving]
        assert np.abs(cur - ref).max() > 2 * ph.apix
        np.testing.assert_allclose(pdist(cur), pdist(ref), atol=1e-9)
        np.testing.assert_allclose(np.linalg.norm(cur - pivot, axis=1), np.linalg.norm(ref - pivot, axis=1), atol=1e-9)
    # No state pushes the moving domain into the rest (closer than 1 px).
    for k in range(ph.n_states):
        assert cKDTree(ph.centres[k, ~moving]).query(ph.centres[k, moving])[0].min() > ph.apix


def test_hinge_angles_spread_evenly_over_a_large_range():
    ph = make_phantom("hinge", BOX, 4.0)
    angles = np.asarray(ph.info["motion"]["angles_deg"])
    assert angles.max() - angles.min() >= 120
    np.testing.assert_allclose(np.diff(angles), np.diff(angles)[0])


def test_assembly_states_drop_whole_subunits_with_uneven_populations():
    ph = make_phantom("assembly", BOX, 6.0)
    assert 8 <= ph.n_states <= 16
    np.testing.assert_array_equal(ph.centres, np.broadcast_to(ph.centres[:1], ph.centres.shape))  # nothing moves
    assert np.all(ph.presence[:, _domain(ph, "core")] == 1)
    patterns = set()
    for k in range(ph.n_states):
        per_domain = []
        for d in range(len(ph.domain_names)):
            vals = np.unique(ph.presence[k, ph.domains == d])
            assert len(vals) == 1  # a subunit is all there or all gone
            per_domain.append(int(vals[0]))
        patterns.add(tuple(per_domain))
    assert len(patterns) == ph.n_states  # every state is a different assembly
    assert any(sum(p) < len(p) for p in patterns)
    assert ph.populations.min() == pytest.approx(0.01, abs=2e-3)
    assert ph.populations.max() == pytest.approx(0.13, abs=2e-3)


def test_mixed_combines_presence_and_motion():
    ph = make_phantom("mixed", BOX, 6.0)
    cap, moving = _domain(ph, "cap"), _domain(ph, "fab_b")
    on = ph.presence[:, cap].mean(1)
    assert set(on) == {0.0, 1.0} and on.mean() == 0.5
    assert np.all(ph.presence[:, ~cap] == 1)
    moved = np.abs(ph.centres[:, moving] - ph.centres[:1, moving]).max(axis=(1, 2))
    assert len(np.unique(np.round(moved[on == 0], 6))) == len(moved) // 2  # each position once per cap state
    assert on[0] == 1  # state 0 is the complete molecule


@pytest.mark.parametrize("oversample", [1, 2])
def test_voxel_sum_equals_analytic_integral(oversample):
    ph = make_phantom("assembly", BOX, 5.0)
    for k in (0, 3):
        vol = state_volume(ph, k, oversample=oversample)
        assert vol.shape == (BOX,) * 3 and vol.dtype == np.float32
        assert vol.sum(dtype=np.float64) * ph.apix**3 == pytest.approx(ph.integral(k), rel=1e-5)
    # States with fewer subunits hold less density.
    assert ph.integral(int(np.argmin(ph.presence.sum(1)))) < ph.integral(int(np.argmax(ph.presence.sum(1))))


def test_rasterise_position_and_band_limit():
    # One bead off-centre: it peaks at voxel (z, y, x) = D//2 + (5, -3, 2) and matches the
    # Gaussian sampled directly to the small error of the band limit (sigma 1.5 px).
    D, apix, sigma = 24, 2.0, 3.0
    c = np.array([[2.0, -3.0, 5.0]]) * apix
    vol = rasterise(c, np.array([sigma]), np.array([1.0]), Lattice(D, apix), oversample=2)
    assert np.unravel_index(np.argmax(vol), vol.shape) == (D // 2 + 5, D // 2 - 3, D // 2 + 2)
    g = (np.arange(D) - D // 2) * apix
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    direct = np.exp(-((x - c[0, 0]) ** 2 + (y - c[0, 1]) ** 2 + (z - c[0, 2]) ** 2) / (2 * sigma**2))
    assert np.abs(vol - direct).max() < 1e-3
    # Without oversampling the map is the Gaussian sampled at the voxel centres.
    direct1 = rasterise(c, np.array([sigma]), np.array([1.0]), Lattice(D, apix), oversample=1)
    np.testing.assert_allclose(direct1, direct, atol=1e-6)


def test_state_volumes_share_the_fixed_part():
    ph = make_phantom("hinge", BOX, 6.0)
    ph_small = type(ph)(**{**ph.__dict__, "centres": ph.centres[:3], "presence": ph.presence[:3],
                           "populations": np.full(3, 1 / 3), "state_names": ph.state_names[:3]})
    for k, vol in enumerate(state_volumes(ph_small)):
        np.testing.assert_allclose(vol, state_volume(ph_small, k), atol=1e-5 * vol.max())


def _principal_frame(points):
    c = points - points.mean(0)
    _, v = np.linalg.eigh(c.T @ c)
    v = v[:, ::-1]
    if np.linalg.det(v) < 0:
        v[:, 2] *= -1
    return c @ v


@pytest.mark.parametrize("preset", ["homogeneous", "assembly"])
def test_molecule_is_chiral(preset):
    # Put the molecule and its mirror image in their principal-axes frames; an achiral molecule
    # would then match its mirror image under one of the four proper axis flips. Ours correlates
    # clearly worse with its mirror image than with itself rotated by 5 degrees.
    D = 48
    ph = make_phantom(preset, D, 1.0)
    on = ph.presence[0] > 0
    x, s, w = ph.centres[0][on], ph.sigmas[on], ph.amplitudes[on]

    def render(points):
        return rasterise(points, s, w, Lattice(D, 1.0), oversample=1).ravel()

    def corr(a, b):
        return np.corrcoef(a, b)[0, 1]

    ref = render(_principal_frame(x))
    mirror = _principal_frame(x * [-1.0, 1.0, 1.0])
    flips = ([1, 1, 1], [-1, -1, 1], [-1, 1, -1], [1, -1, -1])  # the proper axis flips
    best_mirror = max(corr(ref, render(mirror @ np.diag(f))) for f in flips)
    t = np.deg2rad(5.0)
    rot5 = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    assert best_mirror < corr(ref, render(_principal_frame(x) @ rot5.T)) - 0.1
    assert best_mirror < 0.9


# --- atomic models --------------------------------------------------------------------------
